//! The upstream TLS client configuration: built once, shared by every upstream connection (so
//! the session cache gives TLS resumption to new connections).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Why the TLS configuration cannot be built (`ProxyError` says it to the user).
#[derive(Debug)]
pub(crate) enum SetupError {
    /// `BOTTLE_UPSTREAM_CA` is not usable PEM.
    BadCa(String),
    Config(String),
}

/// Web PKI roots (compiled in, so slim and distroless images work) plus the PEM roots from
/// `BOTTLE_UPSTREAM_CA`; full verification; ALPN http/1.1; an in-memory session cache (tickets.rs).
pub(crate) fn client_config(
    extra_roots_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, SetupError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_roots_pem {
        let mut added = 0;
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| {
                SetupError::BadCa(format!("certificate #{} is not valid PEM: {e}", i + 1))
            })?;
            roots.add(cert).map_err(|e| {
                SetupError::BadCa(format!(
                    "certificate #{} is not a usable CA certificate: {e}",
                    i + 1
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(SetupError::BadCa(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // More TLS 1.3 tickets than rustls' 8 per server: a burst of new upstream connections
    // (many clients at once, empty pool) then resumes instead of doing full handshakes.
    config.resumption = rustls::client::Resumption::store(Arc::new(
        super::tickets::TicketStore::new(super::tickets::MAX_TICKETS),
    ));
    Ok(Arc::new(config))
}

/// The SNI name (or IP address) the upstream certificate must match.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, SetupError> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        SetupError::Config(format!(
            "upstream host {host:?} is not a valid TLS server name: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_are_reported() {
        assert!(client_config(None).is_ok());
        assert!(matches!(
            client_config(Some(b"not pem")),
            Err(SetupError::BadCa(_))
        ));
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            client_config(Some(bad)),
            Err(SetupError::BadCa(_))
        ));
        assert!(server_name("api.anthropic.com").is_ok());
        assert!(server_name("::1").is_ok());
    }
}
