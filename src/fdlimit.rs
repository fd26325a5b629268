//! RLIMIT_NOFILE for PID 1 (issue 10 item 4): the proxy holds two descriptors per client (the
//! client's socket and its upstream connection) plus pooled upstreams, so Docker's default
//! soft limit of 1024 runs out well before the default connection cap. At start-up PID 1
//! raises its soft limit to the hard limit ([`raise_soft_to_hard`]), and the forked child
//! puts the original soft limit back before `execve` ([`restore_in_child`]), so the command
//! sees exactly what it would have seen without bottle-init. The proxy then sizes its
//! connection cap from the limit it has (`proxy::Limits::fit_to_fds`).
//!
//! The limit is read and set with a raw `prlimit64` ([`crate::sys::prlimit_nofile`]): the
//! child's restore must be async-signal-safe.

use std::io;

use crate::sys;

/// One RLIMIT_NOFILE value (`struct rlimit64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

fn prlimit(new: Option<NoFile>) -> Result<NoFile, sys::Errno> {
    let (soft, hard) = sys::prlimit_nofile(new.map(|n| (n.soft, n.hard)))?;
    Ok(NoFile { soft, hard })
}

/// The current limit.
pub fn current() -> io::Result<NoFile> {
    Ok(prlimit(None)?)
}

/// Raises the soft limit to the hard limit. Returns the limit as it was before (for
/// [`restore_in_child`]) and the soft limit now in force.
pub fn raise_soft_to_hard() -> io::Result<(NoFile, u64)> {
    let before = current()?;
    if before.soft >= before.hard {
        return Ok((before, before.soft));
    }
    prlimit(Some(NoFile {
        soft: before.hard,
        hard: before.hard,
    }))?;
    Ok((before, before.hard))
}

/// In the forked child, before `execve`: back to `original` (lowering a soft limit needs no
/// privilege). Async-signal-safe: one system call on a value prepared before the fork.
pub fn restore_in_child(original: &NoFile) -> Result<(), sys::Errno> {
    prlimit(Some(*original)).map(drop)
}

/// Descriptors open in this process right now (`/proc/self/fd`), for sizing what is left.
pub fn open_fds() -> Option<usize> {
    // read_dir holds one descriptor of its own while it counts.
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_limit_and_counts_fds() {
        let l = current().unwrap();
        assert!(l.soft <= l.hard && l.soft > 0);
        let n = open_fds().unwrap();
        assert!(n >= 3, "stdio at least: {n}");
    }
}
