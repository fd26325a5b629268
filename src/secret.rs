//! Secrets held by PID 1: the real upstream credential and the per-run session secret.
//!
//! Invariants:
//! - the bytes live in exactly one heap buffer per `Secret`, locked in RAM (`mlock`) so they
//!   are never written to swap, and overwritten with zeros when the `Secret` is dropped;
//! - `Debug` never prints the value, so a stray `{:?}` in a log line cannot leak it;
//! - comparison against client input is constant time in the input's content.
//!
//! The wipe is `zeroize`'s (volatile writes and a compiler fence, so the optimiser cannot drop
//! them as dead stores) and the comparison `subtle`'s: both crates are rustls dependencies
//! already, so they cost nothing, and they are the audited versions of what this file would
//! otherwise write by hand.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::sys;

/// A secret byte string. Construct with [`Secret::new`] (takes ownership of the bytes, so no
/// second copy is left behind) or [`Secret::random_session`].
pub struct Secret {
    buf: Box<[u8]>,
}

impl Secret {
    /// Takes ownership of `bytes`: they are copied into an exactly sized, locked buffer and
    /// the vector is zeroed, spare capacity included (it may hold bytes of the secret from an
    /// earlier reallocation), before it is freed.
    pub fn new(mut bytes: Vec<u8>) -> Secret {
        let boxed: Box<[u8]> = bytes.as_slice().into();
        // Vec's zeroize also clears the capacity past `len`.
        bytes.zeroize();
        lock(&boxed);
        Secret { buf: boxed }
    }

    /// A fresh per-run session secret: `bottle-` followed by 64 hex digits (256 random bits
    /// from the kernel's CSPRNG). Printable, so it can sit in an environment variable and an
    /// HTTP header unchanged.
    pub fn random_session() -> std::io::Result<Secret> {
        let mut raw = [0u8; 32];
        sys::getrandom(&mut raw)?;
        let mut out = Vec::with_capacity(7 + 64);
        out.extend_from_slice(b"bottle-");
        for b in raw {
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0x0f) as usize]);
        }
        wipe(&mut raw);
        Ok(Secret::new(out))
    }

    /// The secret's bytes. Callers must not copy them anywhere long-lived.
    pub fn expose(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Constant-time equality: the time taken depends only on the lengths, never on where the
    /// first differing byte is.
    pub fn ct_eq(&self, candidate: &[u8]) -> bool {
        ct_eq(&self.buf, candidate)
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret::new(self.buf.to_vec())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.buf);
        unlock(&self.buf);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.buf.len())
    }
}

/// Which upstream credential PID 1 holds; decides the header the proxy injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// `CLAUDE_CODE_OAUTH_TOKEN` / `BOTTLE_TOKEN_FILE`: sent as `Authorization: Bearer`.
    OAuth,
    /// `ANTHROPIC_API_KEY`: sent as `x-api-key`.
    ApiKey,
}

/// The real upstream credential.
#[derive(Clone, Debug)]
pub struct Credential {
    pub kind: CredentialKind,
    pub secret: Secret,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Constant time in the content of both slices (`subtle`; different lengths return early:
/// lengths are not secret, the session secret's length is fixed and public).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Overwrites `buf` with zeros in a way the optimiser may not remove (`zeroize`).
pub fn wipe(buf: &mut [u8]) {
    buf.zeroize();
}

fn lock(buf: &[u8]) {
    if buf.is_empty() {
        return;
    }
    // Not fatal (RLIMIT_MEMLOCK): the secret is still wiped on drop; swap is simply not
    // excluded.
    if let Err(e) = sys::mlock(buf) {
        log::debug!("mlock of a secret buffer failed: {e}");
    }
}

fn unlock(buf: &[u8]) {
    if !buf.is_empty() {
        sys::munlock(buf);
    }
}

/// Strips surrounding ASCII whitespace (a token pasted with a newline) without leaving an
/// unwiped copy behind.
pub fn trim(secret: Secret) -> Secret {
    let b = secret.expose();
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    if start == 0 && end == b.len() {
        return secret;
    }
    Secret::new(b[start..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new(b"sk-ant-oat01-very-secret".to_vec());
        let shown = format!(
            "{s:?} {:?}",
            Credential {
                kind: CredentialKind::OAuth,
                secret: s.clone()
            }
        );
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn session_secrets_are_long_random_and_printable() {
        let a = Secret::random_session().unwrap();
        let b = Secret::random_session().unwrap();
        assert_eq!(a.len(), 7 + 64);
        assert!(a.expose().starts_with(b"bottle-"));
        assert!(a.expose()[7..].iter().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn ct_eq_matches_only_identical_bytes() {
        let s = Secret::new(b"abcdef".to_vec());
        assert!(s.ct_eq(b"abcdef"));
        assert!(!s.ct_eq(b"abcdeg"));
        assert!(!s.ct_eq(b"abcde"));
        assert!(!s.ct_eq(b""));
        assert!(!s.ct_eq(b"abcdefg"));
    }

    #[test]
    fn wipe_zeroes() {
        let mut v = *b"hello";
        wipe(&mut v);
        assert_eq!(v, [0; 5]);
    }

    #[test]
    fn trim_removes_surrounding_whitespace_only() {
        assert_eq!(trim(Secret::new(b" \ta b\r\n".to_vec())).expose(), b"a b");
        assert_eq!(trim(Secret::new(b"ab".to_vec())).expose(), b"ab");
        assert_eq!(trim(Secret::new(b"  ".to_vec())).expose(), b"");
    }
}
