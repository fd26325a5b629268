//! Starting the child: everything is prepared before `fork` (argv, envp, the PATH candidates,
//! the drop plan, the onboarding file, the egress filter; `crate::recipe` decides what goes
//! in), so the forked child only makes async-signal-safe system calls ([`become_child`]).
//! [`spawn`] forks, learns through a CLOEXEC pipe whether `execve` succeeded, and returns a
//! [`Child`] guard that kills and reaps the child on any error path until it is released to
//! the supervisor.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::privilege::{self, DropPlan, Step};
use crate::sys::{self, Errno};

/// `PATH` for the child (and for finding its command) when the parent has none.
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The value of `name` in an environment list.
pub fn lookup<'a>(env: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    env.iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// What `~/.claude.json` gets when it does not exist: claude then skips its first-run
/// theme/login picker (shared/facts/claude-code-client.md).
pub const ONBOARDING_JSON: &[u8] = b"{\"hasCompletedOnboarding\": true}\n";

/// Everything the child needs, allocated before fork.
pub struct Prepared {
    /// The command as the user wrote it, for messages.
    pub command: String,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    candidates: Vec<CString>,
    pub plan: DropPlan,
    onboarding: Option<CString>,
    /// The child's process group, session and terminal.
    pub terminal: ChildTerminal,
    /// `BOTTLE_EGRESS=api-only`: installed as the last step before execve.
    pub seccomp: Option<crate::egress::seccomp::Filter>,
    /// RLIMIT_NOFILE as it was before PID 1 raised its soft limit: restored before execve.
    pub nofile: Option<crate::fdlimit::NoFile>,
}

/// Where the child stands towards process groups, sessions and terminals. In every case it
/// leads its own process group, so signals can go to the group (its jobs included) and never
/// to bottle-init's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildTerminal {
    /// PID 1 on a terminal (`docker run -t`): own process group, made the foreground group of
    /// the terminal on stdin, so Ctrl-C and Ctrl-Z reach the child and its jobs.
    Foreground,
    /// PID 1 without a terminal: own process group.
    Group,
    /// `exec` without a terminal: own session (and so its own group), no controlling terminal.
    Session,
    /// `exec` on a terminal: own session whose controlling terminal is a new pty; its slave
    /// replaces each standard fd that was a terminal (`fds[i]` for fd i). The caller's own
    /// terminal never reaches the child.
    Pty { slave: i32, fds: [bool; 3] },
}

impl ChildTerminal {
    /// The child starts its own session (so the parent must not `setpgid` it: that would make
    /// it a group leader first and `setsid` would fail).
    fn new_session(self) -> bool {
        matches!(self, ChildTerminal::Session | ChildTerminal::Pty { .. })
    }
}

#[derive(Debug)]
pub enum PrepareError {
    /// An argument or environment string contains a NUL byte.
    Nul(String),
    Empty,
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Nul(what) => write!(f, "{what} contains a NUL byte; remove it"),
            PrepareError::Empty => write!(f, "the command is empty; give a command after `--`"),
        }
    }
}

/// Paths to try for `cmd`, like execvp: as given when it contains a `/`, else each `PATH`
/// entry (an empty entry means the current directory).
pub fn candidates(cmd: &[u8], path: &[u8]) -> Vec<Vec<u8>> {
    if cmd.contains(&b'/') {
        return vec![cmd.to_vec()];
    }
    path.split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b".".as_slice() } else { dir };
            let mut p = dir.to_vec();
            if !p.ends_with(b"/") {
                p.push(b'/');
            }
            p.extend_from_slice(cmd);
            p
        })
        .collect()
}

fn cstr(bytes: Vec<u8>, what: &str) -> Result<CString, PrepareError> {
    CString::new(bytes).map_err(|_| PrepareError::Nul(what.to_string()))
}

impl Prepared {
    pub fn new(
        argv: &[OsString],
        env: Vec<(Vec<u8>, Vec<u8>)>,
        plan: DropPlan,
        terminal: ChildTerminal,
    ) -> Result<Prepared, PrepareError> {
        let first = argv
            .first()
            .filter(|a| !a.is_empty())
            .ok_or(PrepareError::Empty)?;
        let command = first.to_string_lossy().into_owned();
        let path = lookup(&env, "PATH").unwrap_or(DEFAULT_PATH).to_vec();
        let candidates = candidates(first.as_bytes(), &path)
            .into_iter()
            .map(|c| cstr(c, "the command path"))
            .collect::<Result<Vec<_>, _>>()?;
        let onboarding = lookup(&env, "HOME")
            .filter(|h| h.starts_with(b"/"))
            .map(|h| {
                let mut p = h.to_vec();
                if !p.ends_with(b"/") {
                    p.push(b'/');
                }
                p.extend_from_slice(b".claude.json");
                cstr(p, "HOME")
            })
            .transpose()?;
        let argv_c = argv
            .iter()
            .map(|a| cstr(a.as_bytes().to_vec(), "an argument"))
            .collect::<Result<Vec<_>, _>>()?;
        // The values include the session secret: built at their final size (no reallocation
        // leaves a copy behind) and the source values are wiped.
        let envp_c = env
            .into_iter()
            .map(|(k, mut v)| {
                let mut s = Vec::with_capacity(k.len() + v.len() + 2);
                s.extend_from_slice(&k);
                s.push(b'=');
                s.extend_from_slice(&v);
                crate::secret::wipe(&mut v);
                cstr(s, "an environment variable")
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<_> = argv_c.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp_c.iter().map(|c| c.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(Prepared {
            command,
            _argv: argv_c,
            argv_ptrs,
            _envp: envp_c,
            envp_ptrs,
            candidates,
            plan,
            onboarding,
            terminal,
            seccomp: None,
            nofile: None,
        })
    }
}

impl Prepared {
    /// Overwrites the prepared environment (it holds the session secret) once the child has
    /// exec'd; the pointers are cleared with it.
    pub fn wipe_env(&mut self) {
        self.envp_ptrs = vec![std::ptr::null()];
        for c in std::mem::take(&mut self._envp) {
            let mut bytes = c.into_bytes();
            crate::secret::wipe(&mut bytes);
        }
    }
}

/// Becomes the child and execs it. Returns only on failure. Async-signal-safe: called in the
/// forked child. `keep_fd` survives the fd sweep (the error-report pipe).
pub fn become_child(p: &Prepared, keep_fd: Option<i32>) -> (Step, Errno) {
    // Ignored dispositions survive execve (Rust ignores SIGPIPE): back to defaults.
    sys::reset_signal_dispositions();
    if let Err(failed) = enter_terminal(p.terminal) {
        return failed;
    }
    // No descriptor of bottle-init's (proxy listener, run-info files) leaks into the child.
    let swept = match keep_fd {
        Some(fd) if fd >= 3 => sys::close_range(3, fd as u32 - 1)
            .and_then(|_| sys::close_range(fd as u32 + 1, u32::MAX)),
        _ => sys::close_range(3, u32::MAX),
    };
    if let Err(e) = swept {
        return (Step::CloseFds, e);
    }
    if let Err(failed) = privilege::drop_to_user(&p.plan) {
        return failed;
    }
    // As the child user, so a planted symlink or a file we may not write is the user's own
    // problem, never a root write; O_EXCL|O_NOFOLLOW never touches an existing file.
    if let Some(path) = &p.onboarding {
        let _ = sys::create_exclusive(path, ONBOARDING_JSON, 0o600);
    }
    if let Err(e) = sys::set_sigmask(sys::NO_SIGNALS) {
        return (Step::SignalMask, e);
    }
    // The fd limit the command would have had without bottle-init (PID 1 raised its own).
    // Lowering a soft limit cannot fail for want of privilege; if it did anyway, a higher
    // limit only gives the command more room, so it is not worth refusing to start.
    if let Some(nofile) = &p.nofile {
        let _ = crate::fdlimit::restore_in_child(nofile);
    }
    // Last: from here on the process cannot create IP sockets (api-only egress).
    if let Some(filter) = &p.seccomp
        && let Err(e) = crate::egress::seccomp::install(filter)
    {
        return (Step::Seccomp, e);
    }
    // execvp semantics: remember EACCES, keep looking past ENOENT.
    let mut saw_eacces = false;
    for c in &p.candidates {
        match sys::execve(c, &p.argv_ptrs, &p.envp_ptrs) {
            Errno(libc::ENOENT) | Errno(libc::ENOTDIR) => {}
            Errno(libc::EACCES) => saw_eacces = true,
            other => return (Step::Exec, other),
        }
    }
    (
        Step::Exec,
        Errno(if saw_eacces {
            libc::EACCES
        } else {
            libc::ENOENT
        }),
    )
}

/// Sets up the child's process group, session and terminal. Async-signal-safe.
fn enter_terminal(t: ChildTerminal) -> Result<(), (Step, Errno)> {
    match t {
        ChildTerminal::Foreground => {
            // Our own process group in the terminal's foreground, so Ctrl-C and Ctrl-Z reach
            // the child (and its jobs) and not bottle-init. All signals are still blocked
            // here, so tcsetpgrp from a background group cannot stop us with SIGTTOU.
            let _ = sys::setpgid(0, 0);
            let _ = sys::tcsetpgrp(0, sys::getpid());
        }
        // EPERM/EACCES here only means the parent's setpgid won the race: same result.
        ChildTerminal::Group => {
            let _ = sys::setpgid(0, 0);
        }
        ChildTerminal::Session => sys::setsid().map_err(|e| (Step::Session, e))?,
        ChildTerminal::Pty { slave, fds } => {
            // A new session has no controlling terminal; the fresh pty becomes it. The
            // caller's terminal is not ours any more: TIOCSTI and tcsetpgrp on it fail.
            sys::setsid().map_err(|e| (Step::Session, e))?;
            sys::set_controlling_tty(slave).map_err(|e| (Step::Terminal, e))?;
            for (fd, on) in fds.iter().enumerate() {
                if *on {
                    sys::dup2(slave, fd as i32).map_err(|e| (Step::Terminal, e))?;
                }
            }
        }
    }
    Ok(())
}

/// The child could not be started.
#[derive(Debug)]
pub enum SpawnError {
    Pipe(Errno),
    Fork(Errno),
    /// The forked child reported a failure before or at execve (it has exited and been
    /// reaped).
    Child {
        step: Step,
        errno: Errno,
    },
}

/// A started child that is not supervised yet: dropping it (any error path before the
/// supervision starts) kills and reaps it, so no failed start leaves a command running.
#[derive(Debug)]
pub struct Child {
    pid: i32,
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Hands the child over to a supervisor, which reaps it; the guard is off.
    pub fn release(self) -> i32 {
        let pid = self.pid;
        std::mem::forget(self);
        pid
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = sys::kill(self.pid, libc::SIGKILL);
        let _ = sys::waitpid_blocking(self.pid);
    }
}

/// Forks and starts the child; returns it once execve succeeded.
#[allow(unsafe_code)] // sys::fork: see sys's module doc
pub fn spawn(p: &Prepared) -> Result<Child, SpawnError> {
    // A CLOEXEC pipe: EOF means execve succeeded; 8 bytes mean (step, errno) of a failure.
    let (rfd, wfd) = sys::pipe_cloexec().map_err(SpawnError::Pipe)?;
    // SAFETY: the child below only calls async-signal-safe functions (become_child, write,
    // _exit); everything it uses was allocated before this point.
    let pid = match unsafe { sys::fork() } {
        Ok(pid) => pid,
        Err(e) => {
            sys::close(rfd);
            sys::close(wfd);
            return Err(SpawnError::Fork(e));
        }
    };
    if pid == 0 {
        let (step, errno) = become_child(p, Some(wfd));
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
        msg[4..].copy_from_slice(&errno.0.to_ne_bytes());
        let _ = sys::write_all(wfd, &msg);
        // bottle-init's exit code is decided by main from the report; this status is only
        // reaped.
        sys::exit_now(127);
    }
    sys::close(wfd);
    if !p.terminal.new_session() {
        // Also from the parent, so the group exists whichever process runs first (shells do
        // the same). EACCES after the child's execve is harmless.
        let _ = sys::setpgid(pid, pid);
    }
    let mut msg = [0u8; 8];
    let got = sys::read_full(rfd, &mut msg);
    sys::close(rfd);
    match got {
        Ok(8) => {
            let step = u32::from_ne_bytes(msg[..4].try_into().expect("4 bytes"));
            let errno = i32::from_ne_bytes(msg[4..].try_into().expect("4 bytes"));
            // It exits right after its report.
            let _ = sys::waitpid_blocking(pid);
            Err(SpawnError::Child {
                step: Step::from_u32(step).unwrap_or(Step::Exec),
                errno: Errno(errno),
            })
        }
        // EOF (execve closed the pipe) or a short read we cannot interpret: the child runs.
        _ => Ok(Child { pid }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_execvp() {
        assert_eq!(candidates(b"./x", b"/bin"), vec![b"./x".to_vec()]);
        assert_eq!(
            candidates(b"/usr/bin/env", b"/bin"),
            vec![b"/usr/bin/env".to_vec()]
        );
        assert_eq!(
            candidates(b"claude", b"/usr/local/bin:/bin/::/x/"),
            vec![
                b"/usr/local/bin/claude".to_vec(),
                b"/bin/claude".to_vec(),
                b"./claude".to_vec(),
                b"/x/claude".to_vec()
            ]
        );
    }

    /// The guard: a started child that is dropped before supervision is killed and reaped
    /// (not even a zombie is left). Needs root (the child drops to uid 65534).
    #[test]
    fn a_dropped_guard_kills_and_reaps_the_child() {
        if sys::geteuid() != 0 {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "needs root");
            eprintln!("SKIPPED a_dropped_guard_kills_and_reaps_the_child: not root");
            return;
        }
        let plan = DropPlan {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        let env = vec![(b"PATH".to_vec(), b"/usr/bin:/bin".to_vec())];
        let p = Prepared::new(
            &["sleep".into(), "30".into()],
            env.clone(),
            plan.clone(),
            ChildTerminal::Group,
        )
        .unwrap();
        let child = spawn(&p).unwrap();
        let proc = std::path::PathBuf::from(format!("/proc/{}", child.pid()));
        assert!(proc.exists());
        drop(child);
        assert!(!proc.exists(), "{} is still there", proc.display());
        // A command that cannot be run: the report, and the child already reaped.
        let p = Prepared::new(
            &["no-such-command-xyz".into()],
            env,
            plan,
            ChildTerminal::Group,
        )
        .unwrap();
        match spawn(&p) {
            Err(SpawnError::Child {
                step: Step::Exec,
                errno: Errno(libc::ENOENT),
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prepare_refuses_nul_and_empty() {
        let plan = DropPlan {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
        };
        assert!(matches!(
            Prepared::new(&["a\0b".into()], vec![], plan.clone(), ChildTerminal::Group),
            Err(PrepareError::Nul(_))
        ));
        assert!(matches!(
            Prepared::new(&[], vec![], plan.clone(), ChildTerminal::Group),
            Err(PrepareError::Empty)
        ));
        let p = Prepared::new(
            &["x".into()],
            vec![(b"HOME".to_vec(), b"/home/n".to_vec())],
            plan,
            ChildTerminal::Group,
        )
        .unwrap();
        assert_eq!(
            p.onboarding.as_deref().map(|c| c.to_bytes()),
            Some(b"/home/n/.claude.json".as_slice())
        );
    }
}
