//! RLIMIT_NOFILE for PID 1 (issue 10 item 4): the proxy holds two descriptors per client (the
//! client's socket and its upstream connection) plus pooled upstreams, so Docker's default
//! soft limit of 1024 runs out well before the default connection cap. At start-up PID 1
//! raises its soft limit to the hard limit ([`raise_soft_to_hard`]), and the forked child
//! puts the original soft limit back before `execve` ([`restore_in_child`]), so the command
//! sees exactly what it would have seen without bottle-init. The proxy then sizes its
//! connection cap from the limit it has (`proxy::Limits::fit_to_fds`).
//!
//! Raw `prlimit64` system calls: the limit is per process, and the child's restore must be
//! async-signal-safe (musl's `setrlimit` synchronises all threads with signals).

use std::io;

/// One RLIMIT_NOFILE value (`struct rlimit64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

fn prlimit(new: Option<&libc::rlimit64>) -> Result<NoFile, i32> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new_ptr = new.map_or(std::ptr::null(), |n| n as *const libc::rlimit64);
    // SAFETY: prlimit64(0 = this process, RLIMIT_NOFILE, new or NULL, &old): `new_ptr` is
    // NULL or points at a live rlimit64 the kernel only reads; `old` is a live local it
    // writes. No allocation, so this is also async-signal-safe.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::pid_t,
            libc::RLIMIT_NOFILE,
            new_ptr,
            &mut old as *mut libc::rlimit64,
        )
    };
    if rc == 0 {
        Ok(NoFile {
            soft: old.rlim_cur,
            hard: old.rlim_max,
        })
    } else {
        // SAFETY: reading errno of this thread right after the failed call.
        Err(unsafe { *libc::__errno_location() })
    }
}

/// The current limit.
pub fn current() -> io::Result<NoFile> {
    prlimit(None).map_err(io::Error::from_raw_os_error)
}

/// Raises the soft limit to the hard limit. Returns the limit as it was before (for
/// [`restore_in_child`]) and the soft limit now in force.
pub fn raise_soft_to_hard() -> io::Result<(NoFile, u64)> {
    let before = current()?;
    if before.soft >= before.hard {
        return Ok((before, before.soft));
    }
    let new = libc::rlimit64 {
        rlim_cur: before.hard,
        rlim_max: before.hard,
    };
    prlimit(Some(&new)).map_err(io::Error::from_raw_os_error)?;
    Ok((before, before.hard))
}

/// In the forked child, before `execve`: back to `original` (lowering a soft limit needs no
/// privilege). Async-signal-safe: one system call on a value prepared before the fork.
pub fn restore_in_child(original: &NoFile) -> Result<(), i32> {
    let lim = libc::rlimit64 {
        rlim_cur: original.soft,
        rlim_max: original.hard,
    };
    prlimit(Some(&lim)).map(drop)
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
