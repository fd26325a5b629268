//! The child's environment for each egress mode: pure, no syscalls.
//!
//! The init applies [`child_env`]'s plan on top of the environment it already builds (issue 2):
//! `Force` entries overwrite, `Default` entries are set only when the user did not set them,
//! `Unset` entries are removed.

use std::net::SocketAddr;
use std::path::Path;

/// One change to the child's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvChange {
    /// Set, overwriting any value.
    Force(&'static str, String),
    /// Set only when absent.
    Default(&'static str, String),
    /// Remove.
    Unset(&'static str),
}

/// Proxy variables every common HTTP client reads (curl/git/pip/npm/Bun/Go).
const PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];
const ALL_PROXY_VARS: [&str; 2] = ["ALL_PROXY", "all_proxy"];

/// Where the child reaches the API in a locked mode (`Unix` for `api-only`, `Tcp` for
/// `allowlist`).
#[derive(Debug, Clone, Copy)]
pub enum ApiEndpoint<'a> {
    /// `api-only`: the proxy's Unix socket.
    Unix(&'a Path),
    /// `allowlist`: the proxy's loopback TCP address (API and CONNECT on one listener).
    Tcp(SocketAddr),
}

/// The changes for a locked mode, chosen by its endpoint; `None` (mode `open`) changes nothing.
///
/// - `api-only`: `ANTHROPIC_UNIX_SOCKET=<path>` with `ANTHROPIC_BASE_URL=http://localhost`
///   (together they make claude speak plain HTTP over the socket); every proxy variable
///   removed, since there is no IP route to use one.
/// - `allowlist`: `HTTPS_PROXY`/`HTTP_PROXY` (both cases) point at the proxy, `NO_PROXY`
///   covers the base URL so API calls stay direct; `ALL_PROXY` removed (it would win for
///   some clients and bypass nothing but confuse).
/// - both: `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` and
///   `CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL=1` unless the user set them, so a
///   locked claude starts quietly instead of failing connection after connection.
pub fn child_env(locked: Option<ApiEndpoint<'_>>) -> Vec<EnvChange> {
    use EnvChange::*;
    let mut out = Vec::new();
    match locked {
        None => return out,
        Some(ApiEndpoint::Unix(path)) => {
            out.push(Force(
                "ANTHROPIC_UNIX_SOCKET",
                path.to_string_lossy().into_owned(),
            ));
            out.push(Force("ANTHROPIC_BASE_URL", "http://localhost".into()));
            for k in PROXY_VARS
                .iter()
                .chain(&NO_PROXY_VARS)
                .chain(&ALL_PROXY_VARS)
            {
                out.push(Unset(k));
            }
        }
        Some(ApiEndpoint::Tcp(addr)) => {
            let url = format!("http://{addr}");
            for k in PROXY_VARS {
                out.push(Force(k, url.clone()));
            }
            let host = match addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            };
            let mut hosts = vec![host.as_str()];
            for h in ["localhost", "127.0.0.1", "::1"] {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
            let no_proxy = hosts.join(",");
            for k in NO_PROXY_VARS {
                out.push(Force(k, no_proxy.clone()));
            }
            for k in ALL_PROXY_VARS {
                out.push(Unset(k));
            }
        }
    }
    out.push(Default(
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "1".into(),
    ));
    out.push(Default(
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL",
        "1".into(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::EnvChange::*;
    use super::*;

    #[test]
    fn open_changes_nothing() {
        assert!(child_env(None).is_empty());
    }

    #[test]
    fn api_only() {
        let p = Path::new("/run/bottle-init/api.sock");
        let e = child_env(Some(ApiEndpoint::Unix(p)));
        assert!(e.contains(&Force(
            "ANTHROPIC_UNIX_SOCKET",
            "/run/bottle-init/api.sock".into()
        )));
        assert!(e.contains(&Force("ANTHROPIC_BASE_URL", "http://localhost".into())));
        for k in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "NO_PROXY",
            "ALL_PROXY",
        ] {
            assert!(e.contains(&Unset(k)), "{k}");
        }
        assert!(e.contains(&Default(
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
            "1".into()
        )));
        assert!(e.contains(&Default(
            "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL",
            "1".into()
        )));
    }

    #[test]
    fn allowlist() {
        let a: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let e = child_env(Some(ApiEndpoint::Tcp(a)));
        for k in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            assert!(e.contains(&Force(k, "http://127.0.0.1:4321".into())), "{k}");
        }
        for k in ["NO_PROXY", "no_proxy"] {
            assert!(
                e.contains(&Force(k, "127.0.0.1,localhost,::1".into())),
                "{k}"
            );
        }
        assert!(e.contains(&Unset("ALL_PROXY")));
        assert!(e.contains(&Default(
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
            "1".into()
        )));
        let a6: SocketAddr = "[::1]:4321".parse().unwrap();
        let e = child_env(Some(ApiEndpoint::Tcp(a6)));
        assert!(e.contains(&Force("HTTPS_PROXY", "http://[::1]:4321".into())));
        assert!(e.contains(&Force("NO_PROXY", "[::1],localhost,127.0.0.1,::1".into())));
    }
}
