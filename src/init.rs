//! The init loop: wait for signals synchronously, forward them, reap every child, and when
//! the main child has exited stop what is left (SIGTERM, grace, SIGKILL).
//!
//! Invariants:
//! - all signals are blocked in every thread (main blocks them before any thread exists), so
//!   `sigtimedwait` is the only way a signal is consumed; nothing is lost to a thread;
//! - reaping is a `waitpid(-1, WNOHANG)` loop after EVERY wake-up (signal or 1 s timeout),
//!   and the main child is found inside that loop: SIGCHLD coalescing cannot hide its exit
//!   (catatonit#4);
//! - the child always leads its own process group (child.rs), and forwarding goes to that
//!   group, so `docker stop`'s SIGTERM also reaches the tools claude started; a child that
//!   somehow shares our group gets the signal alone: we never signal our own group;
//! - a stop is bounded: from the first SIGTERM (only SIGTERM: SIGINT is claude's "interrupt",
//!   not a stop) the command and everything left get SIGKILL after the grace period, even if
//!   the command ignores SIGTERM and no outside SIGKILL follows;
//! - if the proxy thread stops (the `proxy_stopped` check, at every wake-up), PID 1 does not
//!   carry on without an API: one error line, SIGTERM to the command's group, SIGKILL after
//!   the grace, and main exits 70 so the orchestrator's restart policy takes over.

use std::time::{Duration, Instant};

use crate::sys::{self, ChildEnd, Errno};

/// Signals never forwarded: SIGCHLD is ours; terminal stop signals for a background init
/// mean nothing to the child.
const NOT_FORWARDED: [i32; 3] = [libc::SIGCHLD, libc::SIGTTIN, libc::SIGTTOU];

/// How often the loop wakes without a signal, as a safety net for reaping (and to notice a
/// stopped proxy thread).
const TICK: Duration = Duration::from_secs(1);
/// During the grace period, how often to look for leftovers re-parented to us.
const GRACE_TICK: Duration = Duration::from_millis(50);

pub fn forwardable(sig: i32) -> bool {
    !NOT_FORWARDED.contains(&sig)
}

/// Where signals for the command go: its process group when it leads one that is not ours,
/// else the command alone (never our own group).
fn target(child: i32) -> i32 {
    match (sys::getpgid(child), sys::getpgid(0)) {
        (Ok(pg), Ok(own)) if pg == child && pg != own => -child,
        _ => child,
    }
}

fn forward(child: i32, sig: i32) {
    let target = target(child);
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

/// How the supervision ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The main child's end.
    pub child: ChildEnd,
    /// Why the proxy thread stopped, when that is what ended the run.
    pub proxy_stopped: Option<String>,
}

/// Runs until the main child has exited and the leftovers are gone. `proxy_stopped` is
/// checked at every wake-up and returns why the proxy thread is gone, once it is.
pub fn supervise(
    child: i32,
    grace: Duration,
    pid1: bool,
    proxy_stopped: &dyn Fn() -> Option<String>,
) -> Ended {
    let mut main_end = None;
    // When the command and everything left get SIGKILL: set by the first SIGTERM.
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let mut proxy_reason: Option<String> = None;
    let end = loop {
        let wait = match kill_at {
            Some(at) if !killed => TICK.min(at.saturating_duration_since(Instant::now())),
            _ => TICK,
        };
        match sys::sigtimedwait(sys::ALL_SIGNALS, wait) {
            Ok(Some(sig)) if forwardable(sig) => {
                forward(child, sig);
                if sig == libc::SIGTERM && kill_at.is_none() {
                    kill_at = Some(Instant::now() + grace);
                    log::info!(
                        "SIGTERM: forwarded; the command and everything left get SIGKILL in {grace:?} (BOTTLE_GRACE) unless they exit"
                    );
                }
            }
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
        if proxy_reason.is_none()
            && let Some(why) = proxy_stopped()
        {
            log::error!(
                "the proxy thread stopped ({why}); the command has no API any more: stopping it (SIGTERM, SIGKILL after {grace:?}) and exiting 70 so the container's restart policy can take over"
            );
            proxy_reason = Some(why);
            forward(child, libc::SIGTERM);
            let at = Instant::now() + grace;
            kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
        }
        if let Some(at) = kill_at
            && !killed
            && Instant::now() >= at
        {
            log::warn!("the command is still running {grace:?} after SIGTERM; sending SIGKILL");
            kill_everything(child, pid1);
            killed = true;
        }
    };
    stop_leftovers(kill_at.unwrap_or_else(|| Instant::now() + grace), pid1);
    Ended {
        child: end,
        proxy_stopped: proxy_reason,
    }
}

/// SIGKILL to the command's group and everything else left.
fn kill_everything(child: i32, pid1: bool) {
    let _ = sys::kill(target(child), libc::SIGKILL);
    signal_leftovers(libc::SIGKILL, pid1, &mut Vec::new());
}

/// SIGTERM to everything left, until `kill_at` for them to exit, then SIGKILL.
fn stop_leftovers(kill_at: Instant, pid1: bool) {
    let mut ignore = None;
    if !reap(0, &mut ignore) {
        return; // nothing left: the common case, exit at once
    }
    if Instant::now() < kill_at {
        log::info!(
            "main child exited; sending SIGTERM to the remaining processes (SIGKILL in {:?})",
            kill_at.saturating_duration_since(Instant::now())
        );
        let mut termed = Vec::new();
        signal_leftovers(libc::SIGTERM, pid1, &mut termed);
        while Instant::now() < kill_at {
            let wait = GRACE_TICK.min(kill_at.saturating_duration_since(Instant::now()));
            let _ = sys::sigtimedwait(sys::ALL_SIGNALS, wait);
            if !reap(0, &mut ignore) {
                return;
            }
            if !pid1 {
                // Grandchildren re-parented to us after their parent died get the SIGTERM too.
                signal_leftovers(libc::SIGTERM, false, &mut termed);
            }
        }
        log::warn!("processes still running after the grace period; sending SIGKILL");
    } else {
        log::warn!("the grace period is over; sending SIGKILL to the remaining processes");
    }
    loop {
        // SIGKILL is re-sent every round (a fresh list each time): pids may be reused.
        signal_leftovers(libc::SIGKILL, pid1, &mut Vec::new());
        let _ = sys::sigtimedwait(sys::ALL_SIGNALS, GRACE_TICK);
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
