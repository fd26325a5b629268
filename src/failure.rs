//! Every way bottle-init ends other than with the command's own status, its exit code and its
//! one line: the only exit-code policy of the crate (README, "Signals and exit status").
//!
//! One [`Failure`] variant per failure site, carrying what the message needs (never a
//! secret: no variant holds one); [`Failure::exit_code`] is the sysexits(3) code, and
//! [`Failure::message`] is `<what is wrong>; <how to fix it>`, which main prints once as
//! `bottle-init: error: ...`. [`Exit`] is how a run that got as far as the command ends.

use std::path::PathBuf;

use crate::child::{PrepareError, SpawnError};
use crate::cli::{Mode, UsageError};
use crate::config::ConfigError;
use crate::egress::apisock::SockError;
use crate::egress::lock::LockError;
use crate::egress::nft::NftError;
use crate::egress::seccomp;
use crate::home::HomeError;
use crate::privilege::{ParentDropError, Step};
use crate::proxy::ProxyError;
use crate::record::{DEFAULT_RUN_DIR, ReadError};
use crate::secretfile::SecretFileError;
use crate::sys::{ChildEnd, Errno};
use crate::user::UserError;

/// sysexits(3).
pub const EX_USAGE: u8 = 64;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_OSERR: u8 = 71;
pub const EX_NOPERM: u8 = 77;
pub const EX_CONFIG: u8 = 78;
/// The shell's codes for a command that cannot be run.
pub const EXIT_NOT_FOUND: u8 = 127;
pub const EXIT_NOT_EXECUTABLE: u8 = 126;

/// How a run that started its command ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The command's end: its status, or 128+N for signal N (shell convention).
    Child(ChildEnd),
    /// The proxy thread stopped while the command ran (bottle-init's own failure): 70.
    ProxyStopped,
    /// `bottle-init check` ran every check: 0 when all passed, 1 when one failed.
    Checked { all_ok: bool },
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Child(ChildEnd::Exited(c)) => (c & 0xff) as u8,
            Exit::Child(ChildEnd::Signaled(n)) => (128 + n).clamp(0, 255) as u8,
            Exit::ProxyStopped => EX_SOFTWARE,
            Exit::Checked { all_ok } => u8::from(!all_ok),
        }
    }
}

/// Everything that stops bottle-init before or instead of the command's own exit status.
#[derive(Debug)]
pub enum Failure {
    Usage(UsageError),
    /// `check --probe` is not `HOST:PORT` (the reason).
    BadProbe(String),
    /// A bottle-init already runs here (its record names a live bottle-init that is not us):
    /// most likely `docker exec C /bottle-init CMD` without the word `exec`.
    AlreadyRunning {
        pid: i32,
        dir: PathBuf,
    },
    SignalSetup(Errno),
    NotRoot {
        euid: u32,
        mode: Mode,
    },
    MissingCaps(Vec<&'static str>),
    /// `status` runs as another uid than root.
    StatusNotRoot {
        euid: u32,
    },
    /// `status` found PID 1's record but not its answer.
    Status {
        dir: PathBuf,
        err: std::io::Error,
    },
    CapRead(Errno),
    Subreaper(Errno),
    Config(ConfigError),
    User(UserError),
    /// The private home of a uid without a passwd entry could not be made safely.
    Home(HomeError),
    SecretFile {
        var: &'static str,
        path: PathBuf,
        err: SecretFileError,
    },
    CaFile {
        path: PathBuf,
        err: std::io::Error,
    },
    SessionSecret(std::io::Error),
    Proxy(ProxyError),
    /// A BOTTLE_EGRESS mode cannot be installed here (never runs half locked).
    Egress(LockError),
    Prepare(PrepareError),
    Spawn(SpawnError),
    /// The forked child (or `exec`'s command) failed a step before `execve`.
    ChildSetup {
        step: Step,
        errno: Errno,
    },
    CommandNotFound(String),
    NotExecutable {
        command: String,
        errno: Errno,
    },
    ParentDrop(ParentDropError),
    ProxyThread(std::io::Error),
    LogThread(std::io::Error),
    /// `exec`: no pty for the command.
    Pty(Errno),
    /// `exec`: no usable record of a running bottle-init in the run directory.
    NoInit {
        dir: PathBuf,
        reason: String,
    },
    /// `exec`: the recorded bottle-init is not running any more.
    InitGone {
        pid: i32,
    },
}

impl Failure {
    /// A failed spawn: a child that could not exec its command is 127/126 like a shell;
    /// anything before that is a system error.
    pub fn spawn(command: &str, e: SpawnError) -> Failure {
        match e {
            SpawnError::Child {
                step: Step::Exec,
                errno: Errno(libc::ENOENT),
            } => Failure::CommandNotFound(command.to_string()),
            SpawnError::Child {
                step: Step::Exec,
                errno,
            } => Failure::NotExecutable {
                command: command.to_string(),
                errno,
            },
            SpawnError::Child { step, errno } => Failure::ChildSetup { step, errno },
            e => Failure::Spawn(e),
        }
    }

    /// `exec` could not join PID 1 through its record in `dir`.
    pub fn join(e: ReadError, dir: PathBuf) -> Failure {
        match e {
            ReadError::Missing(reason) => Failure::NoInit { dir, reason },
            ReadError::NotRunning { pid } => Failure::InitGone { pid },
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::BadProbe(_) | Failure::AlreadyRunning { .. } => EX_USAGE,
            Failure::NotRoot { .. } | Failure::MissingCaps(_) | Failure::StatusNotRoot { .. } => {
                EX_NOPERM
            }
            Failure::Config(_)
            | Failure::User(_)
            | Failure::Home(_)
            | Failure::SecretFile { .. }
            | Failure::CaFile { .. }
            | Failure::Proxy(_)
            | Failure::Prepare(_) => EX_CONFIG,
            Failure::Egress(e) => egress_code(e),
            Failure::CommandNotFound(_) => EXIT_NOT_FOUND,
            Failure::NotExecutable { .. } => EXIT_NOT_EXECUTABLE,
            Failure::SignalSetup(_)
            | Failure::CapRead(_)
            | Failure::Subreaper(_)
            | Failure::SessionSecret(_)
            | Failure::Spawn(_)
            | Failure::ChildSetup { .. }
            | Failure::ParentDrop(_)
            | Failure::ProxyThread(_)
            | Failure::LogThread(_)
            | Failure::Pty(_) => EX_OSERR,
            Failure::NoInit { .. } | Failure::InitGone { .. } | Failure::Status { .. } => {
                EX_UNAVAILABLE
            }
        }
    }

    /// `<what is wrong>; <how to fix>`. Never contains a secret: no variant holds one.
    pub fn message(&self) -> String {
        match self {
            Failure::Usage(e) => e.to_string(),
            Failure::BadProbe(why) => format!(
                "--probe {why}; give the address allowlist mode must refuse as HOST:PORT, e.g. --probe 192.0.2.1:443 or --probe [2001:db8::1]:443"
            ),
            Failure::AlreadyRunning { pid, dir } => format!(
                "a bottle-init is already running here (pid {pid}, state in {}); to run a command in it use `bottle-init exec COMMAND`, e.g. `docker exec -it CONTAINER /bottle-init exec claude`",
                dir.display()
            ),
            Failure::SignalSetup(e) => {
                format!("cannot block signals: {e}; this is a system problem")
            }
            Failure::NotRoot {
                euid,
                mode: Mode::Run,
            } => format!(
                "bottle-init must start as root (running as uid {euid}); run the container as root (no --user) and set BOTTLE_USER for the child"
            ),
            Failure::NotRoot {
                euid,
                mode: Mode::Exec,
            } => format!(
                "bottle-init exec must start as root (running as uid {euid}); run `docker exec` without --user: it drops to the child user itself"
            ),
            Failure::NotRoot {
                euid,
                mode: Mode::Check,
            } => format!(
                "bottle-init check must run as root (running as uid {euid}); run `docker exec C /bottle-init check` without --user: it probes as the child user itself"
            ),
            Failure::MissingCaps(caps) => format!(
                "missing capabilities {}; keep Docker's default capabilities (do not --cap-drop them)",
                caps.iter()
                    .map(|c| format!("CAP_{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Failure::StatusNotRoot { euid } => format!(
                "bottle-init status must run as root (running as uid {euid}); run `docker exec C /bottle-init status` without --user"
            ),
            Failure::Status { dir, err } => format!(
                "the running bottle-init did not answer on {}/{}: {err}; it may predate `status` or be shutting down",
                dir.display(),
                crate::status::SOCKET_FILE
            ),
            Failure::CapRead(e) => {
                format!("cannot read capabilities: {e}; this is a system problem")
            }
            Failure::Subreaper(e) => {
                format!("cannot become a child subreaper: {e}; run bottle-init as PID 1")
            }
            Failure::Config(e) => e.to_string(),
            Failure::User(e) => e.to_string(),
            Failure::Home(e) => e.to_string(),
            Failure::SecretFile { var, path, err } => err.message(var, path),
            Failure::CaFile { path, err } => format!(
                "cannot read BOTTLE_UPSTREAM_CA {}: {err}; point it at a readable PEM file or unset it",
                path.display()
            ),
            Failure::SessionSecret(e) => format!(
                "cannot get random bytes for the session secret: {e}; this is a system problem"
            ),
            Failure::Proxy(e) => e.to_string(),
            Failure::Egress(e) => e.to_string(),
            Failure::Prepare(e) => e.to_string(),
            Failure::Spawn(SpawnError::Pipe(e)) => {
                format!("cannot create a pipe: {e}; this is a system problem")
            }
            Failure::Spawn(SpawnError::Fork(e)) => {
                format!("cannot fork: {e}; raise the container's pids limit or memory")
            }
            Failure::Spawn(SpawnError::Child { step, errno })
            | Failure::ChildSetup { step, errno } => child_setup(*step, *errno),
            Failure::CommandNotFound(c) => {
                format!("command not found: {c}; install it in the image or check PATH")
            }
            Failure::NotExecutable { command, errno } => format!(
                "cannot execute {command}: {errno}; make it executable (and readable) by the child user"
            ),
            Failure::ParentDrop(e) => format!("{e}; keep Docker's default capabilities"),
            Failure::ProxyThread(e) => {
                format!("cannot start the proxy thread: {e}; this is a system problem")
            }
            Failure::LogThread(e) => {
                format!("cannot start the log writer thread: {e}; this is a system problem")
            }
            Failure::Pty(e) => format!(
                "cannot open a new terminal (/dev/ptmx) for the command: {e}; run `docker exec` without -t, or mount devpts"
            ),
            Failure::NoInit { dir, reason } => format!(
                "no running bottle-init found ({reason}); `bottle-init exec` and `check` only work in a container whose PID 1 is bottle-init, with the same BOTTLE_RUN_DIR (here {}, default {DEFAULT_RUN_DIR})",
                dir.display(),
            ),
            Failure::InitGone { pid } => format!(
                "the bottle-init recorded as pid {pid} is not running; start the container with bottle-init as its entrypoint"
            ),
        }
    }
}

/// A failed step of the child before `execve`. The seccomp step names its real cause (an
/// emulator, an old kernel, a profile), not the capabilities.
fn child_setup(step: Step, errno: Errno) -> String {
    match step {
        Step::Seccomp => format!(
            "preparing the child failed at {}: {}",
            step.describe(),
            seccomp::explain(errno)
        ),
        _ => format!(
            "preparing the child failed at {}: {errno}; keep Docker's default capabilities and seccomp profile",
            step.describe()
        ),
    }
}

/// 77 for a missing privilege, 78 for configuration or image problems, 71 otherwise.
fn egress_code(e: &LockError) -> u8 {
    match e {
        LockError::Nft(e) => match e {
            NftError::MissingNetAdmin | NftError::NftPermission { .. } => EX_NOPERM,
            NftError::ChildIsRoot
            | NftError::NoProxyAddress
            | NftError::ProxyNotLoopback { .. }
            | NftError::NftNotFound { .. }
            | NftError::NftUnsupported { .. } => EX_CONFIG,
            NftError::CapCheck { .. }
            | NftError::Spawn { .. }
            | NftError::Feed { .. }
            | NftError::Wait { .. }
            | NftError::NftFailed { .. }
            | NftError::VerifyFailed { .. } => EX_OSERR,
        },
        LockError::Socket(e) => match e {
            SockError::Unsafe { .. } => EX_CONFIG,
            _ => EX_OSERR,
        },
        // Like a kernel without nf_tables: this system cannot run the configured mode.
        LockError::Seccomp { .. } | LockError::HostNetwork => EX_CONFIG,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::mode::EgressMode;
    use crate::egress::seccomp::Unsupported;

    #[test]
    fn child_status_maps_to_exit_code() {
        for c in 0..=255 {
            assert_eq!(Exit::Child(ChildEnd::Exited(c)).code(), c as u8);
        }
        assert_eq!(Exit::Child(ChildEnd::Signaled(libc::SIGTERM)).code(), 143);
        assert_eq!(Exit::Child(ChildEnd::Signaled(libc::SIGINT)).code(), 130);
        assert_eq!(Exit::Child(ChildEnd::Signaled(libc::SIGKILL)).code(), 137);
        assert_eq!(Exit::ProxyStopped.code(), 70);
        assert_eq!(Exit::Checked { all_ok: true }.code(), 0);
        assert_eq!(Exit::Checked { all_ok: false }.code(), 1);
        let f = Failure::BadProbe("\"x\" has no :PORT".into());
        assert_eq!(f.exit_code(), 64);
        assert!(f.message().starts_with("--probe \"x\" has no :PORT; "));
    }

    fn exec_failure(step: Step, errno: i32) -> Failure {
        Failure::spawn(
            "x",
            SpawnError::Child {
                step,
                errno: Errno(errno),
            },
        )
    }

    #[test]
    fn failures_map_to_sysexits() {
        assert_eq!(Failure::Usage(UsageError("-x".into())).exit_code(), 64);
        assert_eq!(Failure::Config(ConfigError::NoCredential).exit_code(), 78);
        assert_eq!(
            Failure::NotRoot {
                euid: 1000,
                mode: Mode::Exec
            }
            .exit_code(),
            77
        );
        assert_eq!(Failure::MissingCaps(vec!["KILL"]).exit_code(), 77);
        assert_eq!(exec_failure(Step::Exec, libc::ENOENT).exit_code(), 127);
        assert_eq!(exec_failure(Step::Exec, libc::EACCES).exit_code(), 126);
        assert_eq!(exec_failure(Step::SetResUid, libc::EPERM).exit_code(), 71);
        let f = exec_failure(Step::Exec, libc::ENOENT);
        assert!(f.message().contains("command not found: x"));
        let f = Failure::join(ReadError::NotRunning { pid: 1 }, "/run/x".into());
        assert_eq!(f.exit_code(), 69);
        let f = Failure::join(ReadError::Missing("no state".into()), "/run/x".into());
        assert_eq!(f.exit_code(), 69);
        assert!(
            f.message()
                .contains("no running bottle-init found (no state)")
        );
        assert_eq!(Failure::Pty(Errno(libc::ENOENT)).exit_code(), 71);
        let f = Failure::AlreadyRunning {
            pid: 1,
            dir: "/run/bottle-init".into(),
        };
        assert_eq!(f.exit_code(), 64);
        assert!(f.message().contains("`bottle-init exec"), "{}", f.message());
    }

    #[test]
    fn a_seccomp_install_failure_names_the_real_cause() {
        let f = Failure::ChildSetup {
            step: Step::Seccomp,
            errno: Errno(libc::ENOSYS),
        };
        let m = f.message();
        assert!(m.contains("qemu-user") && m.contains("ENOSYS"), "{m}");
        assert!(!m.contains("Docker's default capabilities"), "{m}");
        assert_eq!(f.exit_code(), 71);
        let f = exec_failure(Step::Seccomp, libc::ENOSYS);
        assert_eq!(f.message(), m, "forked child and exec say the same");
    }

    #[test]
    fn egress_exit_codes() {
        let code = |e| Failure::Egress(e).exit_code();
        assert_eq!(code(LockError::Nft(NftError::MissingNetAdmin)), 77);
        assert_eq!(
            code(LockError::Nft(NftError::NftNotFound { tried: vec![] })),
            78
        );
        assert_eq!(
            code(LockError::Nft(NftError::VerifyFailed {
                missing: "x".into()
            })),
            71
        );
        assert_eq!(
            code(LockError::Seccomp {
                mode: EgressMode::ApiOnly,
                why: Unsupported::Kernel(Errno(libc::ENOSYS)),
            }),
            78
        );
        assert_eq!(code(LockError::HostNetwork), 78);
        assert_eq!(
            code(LockError::Socket(SockError::Unsafe {
                path: "/x".into(),
                why: "y".into()
            })),
            78
        );
    }
}
