//! `bottle-init exec [--] COMMAND...`, for `docker exec`: such processes get the container's
//! configured environment, token included. This mode strips the credentials (main already
//! wiped them from the environment block), joins the running bottle-init through the state
//! it published (proxy URL, session secret, child user), drops exactly like the child path,
//! and execs in place: no fork, no second proxy.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::child::{self, PrepareError, Prepared};
use crate::envclean;
use crate::privilege::{DropPlan, Step};
use crate::runinfo;
use crate::scrub::EnvSnapshot;
use crate::sys::Errno;

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
    /// The drop or execve failed.
    Failed {
        command: String,
        step: Step,
        errno: Errno,
    },
}

/// Never returns on success (the process becomes COMMAND).
pub fn run(env: &EnvSnapshot, command: &[OsString]) -> ExecError {
    let dir = runinfo::run_dir(env.get("BOTTLE_RUN_DIR"));
    let info = match runinfo::read(&dir) {
        Ok(i) => i,
        Err(reason) => return ExecError::NoState { dir, reason },
    };
    // pid + comm + start time: a recycled pid or another program fails this.
    if runinfo::proc_identity(info.pid) != Some((info.comm.clone(), info.starttime)) {
        return ExecError::NotRunning { pid: info.pid };
    }
    // The egress mode PID 1 runs under: same environment and filter (its nftables rules
    // already cover the child uid). No record: refuse, never run unlocked.
    let egress = match crate::egress::setup::joined(&dir, info.pid, info.starttime) {
        Ok(e) => e,
        Err(reason) => return ExecError::NoState { dir, reason },
    };
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
    // No terminal hand-off: `docker exec -t` already made us the session's foreground.
    let mut prepared = match Prepared::new(command, child_env, plan, false) {
        Ok(p) => p,
        Err(e) => return ExecError::Prepare(e),
    };
    prepared.seccomp = egress.seccomp();
    drop(info);
    let (step, errno) = child::become_child(&prepared, None);
    ExecError::Failed {
        command: prepared.command.clone(),
        step,
        errno,
    }
}
