//! Takes credentials out of the process environment, in place.
//!
//! `/proc/PID/environ` shows the ORIGINAL environment block the kernel placed on the stack at
//! execve, not the live `environ` list: `unsetenv` leaves the value readable there (to root
//! without CAP_SYS_PTRACE, on this kernel, even when dumpable is 0). So for every credential
//! variable we copy the value once into a locked [`Secret`], then overwrite the value's bytes
//! in the block with zeros. At process start every `environ` entry points into that block.
//!
//! Must run while the process is single-threaded and before anything else copies the
//! environment (std's `env::vars` would leave copies in freed heap memory).

use crate::secret::Secret;
use crate::sys;

/// The environment split into secret-bearing variables and the rest.
#[derive(Debug, Default)]
pub struct EnvSnapshot {
    /// Every non-secret `NAME=value`, in order, as raw bytes (environment strings need not be
    /// UTF-8).
    pub plain: Vec<(Vec<u8>, Vec<u8>)>,
    /// Secret-bearing variables: name and value. When a name appears twice, the first wins
    /// (that is what getenv returns); every occurrence is wiped.
    pub secrets: Vec<(String, Secret)>,
}

impl EnvSnapshot {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.plain
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// Splits the environment, moving the values of `secret_names` into [`Secret`]s and zeroing
/// them in the original block, then removes those variables from the live environment.
pub fn capture_and_scrub(secret_names: &[&str]) -> EnvSnapshot {
    let mut snap = EnvSnapshot::default();
    let mut ep = sys::environ();
    if ep.is_null() {
        return snap;
    }
    loop {
        // SAFETY: `environ` is a NULL-terminated array of pointers; we stop at the NULL.
        let entry = unsafe { *ep };
        if entry.is_null() {
            break;
        }
        // SAFETY: each entry is a NUL-terminated string owned by the process (the original
        // block at start-up). We are single-threaded, so nothing writes it concurrently.
        let len = unsafe { libc::strlen(entry) };
        // SAFETY: `entry..entry+len` is the string just measured; the slice is dropped
        // before we write through the raw pointer below.
        let bytes = unsafe { std::slice::from_raw_parts(entry as *const u8, len) };
        let eq = bytes.iter().position(|&b| b == b'=').unwrap_or(len);
        let name = &bytes[..eq];
        let secret = secret_names.iter().find(|n| n.as_bytes() == name);
        match secret {
            Some(n) => {
                let value_start = (eq + 1).min(len);
                if !snap.secrets.iter().any(|(k, _)| k == n) {
                    snap.secrets
                        .push((n.to_string(), Secret::new(bytes[value_start..].to_vec())));
                }
                for i in value_start..len {
                    // SAFETY: `i < len`, inside the string measured above; volatile so the
                    // store is not optimised away as dead.
                    unsafe { std::ptr::write_volatile(entry.add(i), 0) };
                }
            }
            None => {
                let value = if eq < len {
                    bytes[eq + 1..].to_vec()
                } else {
                    Vec::new()
                };
                snap.plain.push((name.to_vec(), value));
            }
        }
        // SAFETY: still inside the NULL-terminated array.
        ep = unsafe { ep.add(1) };
    }
    for name in secret_names {
        // SAFETY: single-threaded (see module doc), so no other thread reads the environment.
        unsafe { std::env::remove_var(name) };
    }
    snap
}
