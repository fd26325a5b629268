//! The privilege drop, as an explicit ordered plan executed through `sys`.
//!
//! Child (after fork, and `bottle-init exec`): bounding set, ambient set, setgroups,
//! setresgid, setresuid, inheritable set, no_new_privs, then verify the result or refuse to
//! exec. Every step here is async-signal-safe (raw syscalls, no allocation): the plan is built
//! before the fork.
//!
//! Parent: keep only CAP_KILL (a uid-0 process without it gets EPERM signalling the uid-1000
//! child), empty the bounding and ambient sets, no_new_privs.

use crate::sys::{self, CapSets, Errno};

pub const CAP_KILL: u32 = 5;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SETPCAP: u32 = 8;

/// Capabilities the parent needs at start, with the name used in messages.
pub const REQUIRED_CAPS: [(u32, &str); 4] = [
    (CAP_SETUID, "SETUID"),
    (CAP_SETGID, "SETGID"),
    (CAP_SETPCAP, "SETPCAP"),
    (CAP_KILL, "KILL"),
];

/// A step of the child's drop; numbered so the forked child can report a failure to the
/// parent through a pipe as plain integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Bounding = 1,
    Ambient = 2,
    SetGroups = 3,
    SetResGid = 4,
    SetResUid = 5,
    Inheritable = 6,
    NoNewPrivs = 7,
    VerifyIds = 8,
    VerifyGroups = 9,
    VerifyCaps = 10,
    VerifyNoNewPrivs = 11,
    CloseFds = 12,
    SignalMask = 13,
    Exec = 14,
    /// Installing the locked egress mode's seccomp filter (the last step before execve).
    Seccomp = 15,
    /// `setsid` (the child's own session, `exec`).
    Session = 16,
    /// Making the new pty the controlling terminal and the standard fds (`exec`).
    Terminal = 17,
}

impl Step {
    pub fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        [
            Bounding,
            Ambient,
            SetGroups,
            SetResGid,
            SetResUid,
            Inheritable,
            NoNewPrivs,
            VerifyIds,
            VerifyGroups,
            VerifyCaps,
            VerifyNoNewPrivs,
            CloseFds,
            SignalMask,
            Exec,
            Seccomp,
            Session,
            Terminal,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::Bounding => "clearing the capability bounding set",
            Step::Ambient => "clearing the ambient capability set",
            Step::SetGroups => "setgroups",
            Step::SetResGid => "setresgid",
            Step::SetResUid => "setresuid",
            Step::Inheritable => "clearing the inheritable capability set",
            Step::NoNewPrivs => "PR_SET_NO_NEW_PRIVS",
            Step::VerifyIds => "verifying the child's user and group ids",
            Step::VerifyGroups => "verifying the child's supplementary groups",
            Step::VerifyCaps => "verifying the child has no capabilities",
            Step::VerifyNoNewPrivs => "verifying no_new_privs",
            Step::CloseFds => "closing inherited file descriptors",
            Step::SignalMask => "resetting the signal mask",
            Step::Seccomp => "installing the BOTTLE_EGRESS seccomp filter",
            Step::Exec => "execve",
            Step::Session => "setsid (the command's own session)",
            Step::Terminal => "attaching the command's new terminal",
        }
    }
}

/// Who to become; built before fork.
#[derive(Clone, Debug)]
pub struct DropPlan {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
}

/// Runs the child's drop and verifies it. Async-signal-safe.
pub fn drop_to_user(plan: &DropPlan) -> Result<(), (Step, Errno)> {
    // The bounding set needs CAP_SETPCAP, so it goes before setresuid takes every capability.
    sys::clear_bounding_set().map_err(|e| (Step::Bounding, e))?;
    sys::clear_ambient().map_err(|e| (Step::Ambient, e))?;
    // Groups before gid before uid: each needs the capability the next one removes.
    sys::setgroups(&plan.groups).map_err(|e| (Step::SetGroups, e))?;
    sys::setresgid(plan.gid).map_err(|e| (Step::SetResGid, e))?;
    // With all three uids non-zero the kernel clears the permitted and effective sets
    // (capabilities(7), "Effect of user ID changes on capabilities").
    sys::setresuid(plan.uid).map_err(|e| (Step::SetResUid, e))?;
    // ... but not the inheritable set: empty it explicitly (lowering needs no capability).
    sys::capset(CapSets::default()).map_err(|e| (Step::Inheritable, e))?;
    // no_new_privs: set-uid binaries (sudo, su) and file capabilities can't lift us back.
    sys::set_no_new_privs().map_err(|e| (Step::NoNewPrivs, e))?;
    verify(plan)
}

/// Checks the result of [`drop_to_user`]; a mismatch is reported as `EPERM`. Async-signal-safe.
pub fn verify(plan: &DropPlan) -> Result<(), (Step, Errno)> {
    let bad = |s| (s, Errno(libc::EPERM));
    let uid = sys::getresuid().map_err(|e| (Step::VerifyIds, e))?;
    let gid = sys::getresgid().map_err(|e| (Step::VerifyIds, e))?;
    if uid != (plan.uid, plan.uid, plan.uid) || gid != (plan.gid, plan.gid, plan.gid) {
        return Err(bad(Step::VerifyIds));
    }
    let mut buf = [0 as libc::gid_t; 256];
    let n = sys::getgroups(&mut buf).map_err(|e| (Step::VerifyGroups, e))?;
    if n != plan.groups.len() || !buf[..n].iter().all(|g| plan.groups.contains(g)) {
        return Err(bad(Step::VerifyGroups));
    }
    let caps = sys::capget().map_err(|e| (Step::VerifyCaps, e))?;
    if caps != CapSets::default()
        || sys::bounding_set_nonempty().map_err(|e| (Step::VerifyCaps, e))?
        || sys::ambient_nonempty().map_err(|e| (Step::VerifyCaps, e))?
    {
        return Err(bad(Step::VerifyCaps));
    }
    if !sys::get_no_new_privs().map_err(|e| (Step::VerifyNoNewPrivs, e))? {
        return Err(bad(Step::VerifyNoNewPrivs));
    }
    Ok(())
}

/// Names of the [`REQUIRED_CAPS`] missing from the effective set.
pub fn missing_start_caps() -> Result<Vec<&'static str>, Errno> {
    let caps = sys::capget()?;
    Ok(REQUIRED_CAPS
        .iter()
        .filter(|(c, _)| caps.effective & (1u64 << c) == 0)
        .map(|(_, n)| *n)
        .collect())
}

/// Where the parent's drop failed.
#[derive(Debug)]
pub enum ParentDropError {
    Bounding(Errno),
    Ambient(Errno),
    Capset(Errno),
    NoNewPrivs(Errno),
}

impl std::fmt::Display for ParentDropError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParentDropError::Bounding(e) => write!(f, "clearing bottle-init's bounding set: {e}"),
            ParentDropError::Ambient(e) => write!(f, "clearing bottle-init's ambient set: {e}"),
            ParentDropError::Capset(e) => write!(f, "dropping bottle-init's capabilities: {e}"),
            ParentDropError::NoNewPrivs(e) => write!(f, "setting no_new_privs on bottle-init: {e}"),
        }
    }
}

/// Drops the parent to CAP_KILL only. Must run before the proxy thread exists: capability
/// sets are per thread and a new thread inherits the creator's.
pub fn drop_parent() -> Result<(), ParentDropError> {
    sys::clear_bounding_set().map_err(ParentDropError::Bounding)?;
    sys::clear_ambient().map_err(ParentDropError::Ambient)?;
    let kill = 1u64 << CAP_KILL;
    sys::capset(CapSets {
        effective: kill,
        permitted: kill,
        inheritable: 0,
    })
    .map_err(ParentDropError::Capset)?;
    sys::set_no_new_privs().map_err(ParentDropError::NoNewPrivs)
}
