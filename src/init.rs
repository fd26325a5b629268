//! The init loop: wait for signals synchronously, forward them, reap every child, and when
//! the main child has exited stop what is left (SIGTERM, grace, SIGKILL).
//!
//! Invariants:
//! - all signals are blocked in every thread (main blocks them before any thread exists), so
//!   `sigtimedwait` is the only way a signal is consumed; nothing is lost to a thread;
//! - reaping is a `waitpid(-1, WNOHANG)` loop after EVERY wake-up (signal or 1 s timeout),
//!   and the main child is found inside that loop: SIGCHLD coalescing cannot hide its exit
//!   (catatonit#4);
//! - forwarding goes to the child's process group when the child leads one (it does when it
//!   owns the terminal: then its jobs get `docker stop`'s SIGTERM too, like a terminal's
//!   Ctrl-C), else to the child alone (tini's default; a child sharing our group must not make
//!   us signal ourselves).

use std::time::{Duration, Instant};

use crate::sys::{self, ChildEnd, Errno};

/// Signals never forwarded: SIGCHLD is ours; terminal stop signals for a background init
/// mean nothing to the child.
const NOT_FORWARDED: [i32; 3] = [libc::SIGCHLD, libc::SIGTTIN, libc::SIGTTOU];

/// How often the loop wakes without a signal, as a safety net for reaping.
const TICK: Duration = Duration::from_secs(1);
/// During the grace period, how often to look for leftovers re-parented to us.
const GRACE_TICK: Duration = Duration::from_millis(50);

pub fn forwardable(sig: i32) -> bool {
    !NOT_FORWARDED.contains(&sig)
}

/// Where a forwarded signal goes.
fn forward(child: i32, sig: i32) {
    let target = match sys::getpgid(child) {
        Ok(pg) if pg == child => -child,
        _ => child,
    };
    match sys::kill(target, sig) {
        Ok(()) => log::debug!("forwarded signal {sig} to {target}"),
        // The child may have exited an instant ago; the reap loop will see it.
        Err(Errno(libc::ESRCH)) => log::debug!("signal {sig}: child {child} already gone"),
        Err(e) => log::warn!("could not forward signal {sig} to {target}: {e}"),
    }
}

/// Reaps everything that has exited; records the main child's end.
/// Returns false when there are no children left at all.
fn reap(child: i32, main_end: &mut Option<ChildEnd>) -> bool {
    loop {
        match sys::waitpid_nohang(-1) {
            Ok(Some((pid, end))) => {
                if pid == child {
                    log::debug!("main child {pid} ended: {end:?}");
                    *main_end = Some(end);
                } else {
                    log::debug!("reaped orphan {pid}: {end:?}");
                }
            }
            Ok(None) => return true,
            Err(Errno(libc::ECHILD)) => return false,
            Err(Errno(libc::EINTR)) => {}
            Err(e) => {
                log::warn!("waitpid: {e}");
                return true;
            }
        }
    }
}

/// Sends `sig` to every process left: with PID 1, `kill(-1)` reaches everything in the PID
/// namespace but ourselves; otherwise only our own children (orphans re-parented to us as a
/// subreaper). `kill(-1)` outside a namespace would hit the whole machine.
fn signal_leftovers(sig: i32, pid1: bool, already: &mut Vec<i32>) {
    if pid1 {
        match sys::kill(-1, sig) {
            Ok(()) | Err(Errno(libc::ESRCH)) => {}
            Err(e) => log::warn!("kill(-1, {sig}): {e}"),
        }
        return;
    }
    for pid in own_children() {
        if !already.contains(&pid) {
            let _ = sys::kill(pid, sig);
            already.push(pid);
        }
    }
}

/// Direct children of this process, from /proc (no CONFIG_PROC_CHILDREN needed).
fn own_children() -> Vec<i32> {
    let me = sys::getpid();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
                == Some(me)
        })
        .collect()
}

/// The parent pid from a `/proc/PID/stat` line (field 4, after the parenthesised comm, which
/// may itself contain spaces and parentheses).
pub fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Runs until the main child has exited and the leftovers are gone; returns how it ended.
pub fn supervise(child: i32, grace: Duration, pid1: bool) -> ChildEnd {
    let all = sys::full_sigset();
    let mut main_end = None;
    let end = loop {
        match sys::sigtimedwait(&all, TICK) {
            Ok(Some(sig)) if forwardable(sig) => forward(child, sig),
            Ok(_) => {}
            Err(e) => log::warn!("sigtimedwait: {e}"),
        }
        let any_left = reap(child, &mut main_end);
        if let Some(end) = main_end {
            break end;
        }
        if !any_left {
            // Cannot happen while the child lives; guard against looping forever.
            log::error!("main child {child} vanished without a status");
            break ChildEnd::Exited(1);
        }
    };
    stop_leftovers(grace, pid1);
    end
}

/// SIGTERM to everything left, up to `grace` for them to exit, then SIGKILL.
fn stop_leftovers(grace: Duration, pid1: bool) {
    let mut ignore = None;
    if !reap(0, &mut ignore) {
        return; // nothing left: the common case, exit at once
    }
    log::info!(
        "main child exited; sending SIGTERM to the remaining processes (grace {:?})",
        grace
    );
    let mut termed = Vec::new();
    signal_leftovers(libc::SIGTERM, pid1, &mut termed);
    let deadline = Instant::now() + grace;
    let all = sys::full_sigset();
    while Instant::now() < deadline {
        let wait = GRACE_TICK.min(deadline.saturating_duration_since(Instant::now()));
        let _ = sys::sigtimedwait(&all, wait);
        if !reap(0, &mut ignore) {
            return;
        }
        if !pid1 {
            // Grandchildren re-parented to us after their parent died get the SIGTERM too.
            signal_leftovers(libc::SIGTERM, false, &mut termed);
        }
    }
    log::warn!("processes still running after the grace period; sending SIGKILL");
    loop {
        // SIGKILL is re-sent every round (a fresh list each time): pids may be reused.
        signal_leftovers(libc::SIGKILL, pid1, &mut Vec::new());
        let _ = sys::sigtimedwait(&all, GRACE_TICK);
        if !reap(0, &mut ignore) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_parsing_handles_odd_comm() {
        assert_eq!(parse_ppid("42 (sh) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("42 (a) b) (c) R 9 1"), Some(9));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn forwarding_policy() {
        for s in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGWINCH,
            libc::SIGQUIT,
        ] {
            assert!(forwardable(s), "{s}");
        }
        for s in NOT_FORWARDED {
            assert!(!forwardable(s), "{s}");
        }
    }
}
