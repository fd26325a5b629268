//! `bottle-init exec [--] COMMAND...`, for `docker exec`: such processes get the container's
//! configured environment, token included. This mode wipes the credentials (main already
//! zeroed them in the environment block), joins the running bottle-init through the state it
//! published (proxy URL, session secret, child user), and starts the command dropped exactly
//! like PID 1's child: no second proxy.
//!
//! The command never shares a terminal with this (root) process's caller: it gets its own
//! session, and on a terminal its own pty, which this process relays as root, not dumpable,
//! with only CAP_KILL left (see `relay`).
//!
//! Order: read and check PID 1's state -> build the child (environment, drop plan, egress
//! filter) -> signalfd, pty -> fork (the child: setsid, pty as controlling terminal, drop,
//! execve) -> the parent drops to CAP_KILL, leaves the caller's directory, relays.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::child::{self, ChildTerminal, PrepareError, Prepared, SpawnError};
use crate::envclean;
use crate::privilege::{self, DropPlan, ParentDropError, Step};
use crate::relay::{self, Pty};
use crate::runinfo;
use crate::scrub::EnvSnapshot;
use crate::sys::{self, ChildEnd, Errno};

#[derive(Debug)]
pub enum ExecError {
    /// No usable state file: bottle-init is not running here (or not as PID 1's tree).
    NoState {
        dir: PathBuf,
        reason: String,
    },
    /// The recorded process is gone or is something else now.
    NotRunning {
        pid: i32,
    },
    Prepare(PrepareError),
    /// The signalfd the relay waits on.
    SignalFd(Errno),
    /// A pty for the command could not be made.
    Pty(Errno),
    Spawn(SpawnError),
    /// The drop or execve failed in the child.
    Failed {
        command: String,
        step: Step,
        errno: Errno,
    },
    /// The relay could not drop to CAP_KILL (the command was killed).
    ParentDrop(ParentDropError),
}

/// Runs the command and relays until it exits; returns how it ended.
pub fn run(
    env: &mut EnvSnapshot,
    run_dir: &std::path::Path,
    command: &[OsString],
) -> Result<ChildEnd, ExecError> {
    // The container's credentials, which `docker exec` handed us: exec needs none (the proxy
    // of PID 1 holds the real one). Dropping the Secrets zeroes them.
    env.secrets.clear();
    let dir = runinfo::run_dir(run_dir);
    let info = runinfo::read(&dir).map_err(|reason| ExecError::NoState {
        dir: dir.clone(),
        reason,
    })?;
    // pid + comm + start time: a recycled pid or another program fails this.
    if runinfo::proc_identity(info.pid) != Some((info.comm.clone(), info.starttime)) {
        return Err(ExecError::NotRunning { pid: info.pid });
    }
    // The egress mode PID 1 runs under: same environment and filter (its nftables rules
    // already cover the child uid). No record: refuse, never run unlocked.
    let egress = crate::egress::setup::joined(&dir, info.pid, info.starttime)
        .map_err(|reason| ExecError::NoState { dir, reason })?;
    let mut child_env = envclean::child_env(
        &env.plain,
        &info.user,
        &info.base_url,
        info.kind,
        info.session.expose(),
    );
    egress.apply_env(&mut child_env);
    let plan = DropPlan {
        uid: info.user.uid,
        gid: info.user.gid,
        groups: info.user.groups.clone(),
    };
    let sigfd = sys::signalfd(sys::ALL_SIGNALS).map_err(ExecError::SignalFd)?;
    let mut pty = Pty::open(relay::caller_ttys(), plan.uid, plan.gid).map_err(ExecError::Pty)?;
    let terminal = match &pty {
        Some(p) => ChildTerminal::Pty {
            slave: p.slave,
            fds: p.fds,
        },
        None => ChildTerminal::Session,
    };
    let mut prepared =
        Prepared::new(command, child_env, plan, terminal).map_err(ExecError::Prepare)?;
    prepared.seccomp = egress.seccomp();
    drop(info);
    let child = match child::spawn(&prepared) {
        Ok(pid) => pid,
        Err(SpawnError::Child { pid, step, errno }) => {
            let _ = sys::waitpid_blocking(pid);
            return Err(ExecError::Failed {
                command: prepared.command.clone(),
                step,
                errno,
            });
        }
        Err(e) => return Err(ExecError::Spawn(e)),
    };
    prepared.wipe_env();
    if let Some(p) = pty.as_mut() {
        sys::close(p.slave);
        p.slave = -1;
    }
    // Stay root (a uid-1000 process can neither ptrace nor signal us) but keep only CAP_KILL,
    // to forward signals to the uid-1000 command. Single-threaded, so the drop covers us.
    if let Err(e) = privilege::drop_parent() {
        let _ = sys::kill(child, libc::SIGKILL);
        let _ = sys::waitpid_blocking(child);
        return Err(ExecError::ParentDrop(e));
    }
    // Like PID 1: do not hold the caller's directory (often a bind mount) while relaying.
    let _ = sys::chdir(c"/");
    Ok(relay::supervise(child, sigfd, pty))
}
