//! bottle-init: entry point. The start-up sequence reads top to bottom in [`main`] and
//! [`run`]; exit-code policy lives here and only here ([`Failure::exit_code`],
//! [`status_code`]).

use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use bottle_init::child::{self, PrepareError, Prepared, SpawnError};
use bottle_init::cli::{self, Cli, Mode, UsageError};
use bottle_init::config::{self, Config, ConfigError, CredentialSource};
use bottle_init::egress::setup::{self as egress_setup, SetupError};
use bottle_init::exec::{self, ExecError};
use bottle_init::privilege::{self, DropPlan, ParentDropError, Step};
use bottle_init::proxy::{Proxy, ProxyConfig, ProxyError};
use bottle_init::runinfo::{self, RunInfo};
use bottle_init::scrub::{self, EnvSnapshot};
use bottle_init::secret::{Credential, Secret};
use bottle_init::sys::{self, ChildEnd, Errno};
use bottle_init::tokenfile::{self, TokenFileError};
use bottle_init::user::{self, UserError};
use bottle_init::{envclean, init};

/// sysexits(3) codes for start-up failures.
const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
const EX_OSERR: u8 = 71;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

/// Everything that stops bottle-init before or instead of the child's own exit status.
/// One variant per failure site; [`Failure::message`] is the single stderr line.
#[derive(Debug)]
enum Failure {
    Usage(UsageError),
    SignalSetup(Errno),
    NotRoot {
        euid: u32,
        mode: Mode,
    },
    MissingCaps(Vec<&'static str>),
    CapRead(Errno),
    Subreaper(Errno),
    Config(ConfigError),
    User(UserError),
    TokenFile {
        path: PathBuf,
        err: TokenFileError,
    },
    CaFile {
        path: PathBuf,
        err: std::io::Error,
    },
    SessionSecret(std::io::Error),
    Proxy(ProxyError),
    Prepare(PrepareError),
    Spawn(SpawnError),
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
    Exec(ExecError),
    /// A BOTTLE_EGRESS mode could not be validated or installed (never runs half locked).
    Egress(SetupError),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EX_USAGE,
            Failure::NotRoot { .. } | Failure::MissingCaps(_) => EX_NOPERM,
            Failure::Config(_)
            | Failure::User(_)
            | Failure::TokenFile { .. }
            | Failure::CaFile { .. }
            | Failure::Proxy(_)
            | Failure::Prepare(_) => EX_CONFIG,
            Failure::CommandNotFound(_) => 127,
            Failure::NotExecutable { .. } => 126,
            Failure::SignalSetup(_)
            | Failure::CapRead(_)
            | Failure::Subreaper(_)
            | Failure::SessionSecret(_)
            | Failure::Spawn(_)
            | Failure::ChildSetup { .. }
            | Failure::ParentDrop(_)
            | Failure::ProxyThread(_) => EX_OSERR,
            Failure::Exec(e) => match e {
                ExecError::NoState { .. } | ExecError::NotRunning { .. } => EX_UNAVAILABLE,
                ExecError::Prepare(_) => EX_CONFIG,
                ExecError::Failed { .. } => EX_OSERR,
            },
            Failure::Egress(e) => e.exit_code(),
        }
    }

    /// `<what is wrong>; <how to fix>`. Never contains a secret: no variant holds one.
    fn message(&self) -> String {
        match self {
            Failure::Usage(e) => e.to_string(),
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
            Failure::MissingCaps(caps) => format!(
                "missing capabilities {}; keep Docker's default capabilities (do not --cap-drop them)",
                caps.iter()
                    .map(|c| format!("CAP_{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Failure::CapRead(e) => {
                format!("cannot read capabilities: {e}; this is a system problem")
            }
            Failure::Subreaper(e) => {
                format!("cannot become a child subreaper: {e}; run bottle-init as PID 1")
            }
            Failure::Config(e) => e.to_string(),
            Failure::User(e) => e.to_string(),
            Failure::TokenFile { path, err } => err.message(path),
            Failure::CaFile { path, err } => format!(
                "cannot read BOTTLE_UPSTREAM_CA {}: {err}; point it at a readable PEM file or unset it",
                path.display()
            ),
            Failure::SessionSecret(e) => format!(
                "cannot get random bytes for the session secret: {e}; this is a system problem"
            ),
            Failure::Proxy(e) => e.to_string(),
            Failure::Prepare(e) => e.to_string(),
            Failure::Spawn(SpawnError::Pipe(e)) => {
                format!("cannot create a pipe: {e}; this is a system problem")
            }
            Failure::Spawn(SpawnError::Fork(e)) => {
                format!("cannot fork: {e}; raise the container's pids limit or memory")
            }
            Failure::Spawn(SpawnError::Child { step, errno, .. })
            | Failure::ChildSetup { step, errno } => format!(
                "preparing the child failed at {}: {errno}; keep Docker's default capabilities and seccomp profile",
                step.describe()
            ),
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
            Failure::Exec(ExecError::NoState { dir, reason }) => format!(
                "no running bottle-init found ({reason}); `bottle-init exec` only works in a container whose PID 1 is bottle-init, with the same BOTTLE_RUN_DIR (here {}, default {})",
                dir.display(),
                runinfo::DEFAULT_RUN_DIR
            ),
            Failure::Exec(ExecError::NotRunning { pid }) => format!(
                "the bottle-init recorded as pid {pid} is not running; start the container with bottle-init as its entrypoint"
            ),
            Failure::Exec(ExecError::Prepare(e)) => e.to_string(),
            Failure::Egress(e) => e.to_string(),
            Failure::Exec(ExecError::Failed {
                command,
                step,
                errno,
            }) => match exec_failure(command, *step, *errno) {
                Failure::Exec(_) => unreachable!("exec_failure never returns Exec"),
                f => f.message(),
            },
        }
    }
}

/// The exit code and message for a failed exec/drop of the child (forked or `exec` mode).
fn exec_failure(command: &str, step: Step, errno: Errno) -> Failure {
    match (step, errno) {
        (Step::Exec, Errno(libc::ENOENT)) => Failure::CommandNotFound(command.to_string()),
        (Step::Exec, errno) => Failure::NotExecutable {
            command: command.to_string(),
            errno,
        },
        (step, errno) => Failure::ChildSetup { step, errno },
    }
}

/// Exit code for how the child ended: its status, or 128+N for signal N (shell convention).
fn status_code(end: ChildEnd) -> u8 {
    match end {
        ChildEnd::Exited(c) => (c & 0xff) as u8,
        ChildEnd::Signaled(n) => (128 + n).clamp(0, 255) as u8,
    }
}

fn exit_code_of(failure: &Failure) -> u8 {
    match failure {
        Failure::Exec(ExecError::Failed {
            command,
            step,
            errno,
        }) => exec_failure(command, *step, *errno).exit_code(),
        f => f.exit_code(),
    }
}

fn main() -> ExitCode {
    // 1. Block every signal before any thread exists: a signal unblocked in some thread can be
    //    delivered there and lost. The init loop collects them with sigtimedwait.
    if let Err(e) = sys::set_sigmask(sys::ALL_SIGNALS) {
        return report(Failure::SignalSetup(e));
    }
    // 1b. Not dumpable before the credential is touched: /proc/self/* becomes root-owned and
    //     ptrace attach is refused. Failure is logged below (it is a hardening layer; the
    //     scrub in step 2 is what removes the token from /proc/1/environ).
    let dumpable = sys::set_dumpable(false);
    // 2. Take the credentials out of the environment: one locked copy each, the original
    //    environment block overwritten.
    let mut env = scrub::capture_and_scrub(&config::SECRET_VARS);
    init_logging(env.get("BOTTLE_LOG"));
    if let Err(e) = dumpable {
        log::warn!("PR_SET_DUMPABLE=0 failed: {e}");
    }

    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = match cli::parse(&args) {
        Err(e) => Err(Failure::Usage(e)),
        Ok(Cli::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Version) => {
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Start {
            mode: Mode::Exec,
            command,
        }) => exec_mode(&env, &command),
        Ok(Cli::Start {
            mode: Mode::Run,
            command,
        }) => run(&mut env, &command),
    };
    match result {
        Ok(end) => ExitCode::from(status_code(end)),
        Err(f) => report(f),
    }
}

fn report(f: Failure) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "bottle-init: error: {}", f.message());
    ExitCode::from(exit_code_of(&f))
}

fn init_logging(filter: Option<&[u8]>) {
    // On a terminal the child (interactive claude) owns the screen: info lines from the proxy
    // would be drawn into its full-screen UI. Unless asked, log only warnings there.
    let default = if sys::isatty(2) { "warn" } else { "info" };
    let filter = filter
        .and_then(|f| std::str::from_utf8(f).ok())
        .filter(|f| !f.is_empty())
        .unwrap_or(default);
    env_logger::Builder::new()
        .parse_filters(filter)
        .target(env_logger::Target::Stderr)
        .format(|buf, rec| {
            writeln!(
                buf,
                "bottle-init: {}: {}",
                rec.level().as_str().to_ascii_lowercase(),
                rec.args()
            )
        })
        .init();
}

/// Root, with the capabilities the drop and the forwarding need.
fn check_privileges(mode: Mode, needed: &[&str]) -> Result<(), Failure> {
    let euid = sys::geteuid();
    if euid != 0 {
        return Err(Failure::NotRoot { euid, mode });
    }
    let missing: Vec<&str> = privilege::missing_start_caps()
        .map_err(Failure::CapRead)?
        .into_iter()
        .filter(|c| needed.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(Failure::MissingCaps(missing));
    }
    Ok(())
}

/// PID 1 mode: steps 3 to 7 of the sequence.
fn run(env: &mut EnvSnapshot, command: &[OsString]) -> Result<ChildEnd, Failure> {
    check_privileges(Mode::Run, &["SETUID", "SETGID", "SETPCAP", "KILL"])?;
    // Egress first: a mode that cannot be installed refuses before any side effect.
    let egress_plan = egress_setup::validate(|k| {
        use std::os::unix::ffi::OsStrExt;
        env.get(k)
            .map(|v| std::ffi::OsStr::from_bytes(v).to_os_string())
    })
    .map_err(Failure::Egress)?;
    if env
        .secrets
        .iter()
        .any(|(n, v)| n == config::ENV_AUTH_TOKEN && !v.is_empty())
    {
        log::warn!(
            "{} is set but is not an accepted credential; it was removed (use {} or {})",
            config::ENV_AUTH_TOKEN,
            config::ENV_OAUTH,
            config::ENV_API_KEY
        );
    }
    let config = Config::from_env(env).map_err(Failure::Config)?;
    let user = user::lookup(&config.user).map_err(Failure::User)?;
    let pid1 = sys::getpid() == 1;
    if !pid1 {
        // Not PID 1 (tests, `docker run --init`): orphans must still come back to us.
        sys::set_child_subreaper().map_err(Failure::Subreaper)?;
    }

    // Credential (env, already captured) or token file (read now: root, not dumpable).
    let credential = match config.credential {
        CredentialSource::Env { kind, secret } => Credential { kind, secret },
        CredentialSource::File(path) => {
            if tokenfile::readable_by(&path, &user) {
                log::warn!(
                    "BOTTLE_TOKEN_FILE {} is readable by the child user (uid {}); make it root-owned mode 0600",
                    path.display(),
                    user.uid
                );
            }
            let secret = tokenfile::read(&path).map_err(|err| Failure::TokenFile {
                path: path.clone(),
                err,
            })?;
            Credential {
                kind: bottle_init::secret::CredentialKind::OAuth,
                secret,
            }
        }
    };
    let kind = credential.kind;
    let extra_roots_pem = match &config.upstream_ca {
        None => None,
        Some(path) => Some(std::fs::read(path).map_err(|err| Failure::CaFile {
            path: path.clone(),
            err,
        })?),
    };
    let session_secret = Secret::random_session().map_err(Failure::SessionSecret)?;
    let session_for_child = session_secret.clone();

    // 3. Bind the listener before forking, so the child can connect at once.
    let proxy = Proxy::bind(
        config.listen,
        ProxyConfig {
            upstream: config.upstream,
            extra_roots_pem,
            credential,
            session_secret,
        },
    )
    .map_err(Failure::Proxy)?;
    let base_url = format!("http://{}", connect_addr(proxy.local_addr()));
    // 3b. Egress lockdown (still root, before fork): the API socket (api-only) or the
    //     nftables rules for the child's uid (allowlist), installed and verified.
    let run_dir = runinfo::run_dir(env.get("BOTTLE_RUN_DIR"));
    let dialled = connect_addr(proxy.local_addr());
    let (proxy, egress) =
        egress_setup::lock(&egress_plan, proxy, dialled, user.uid, user.gid, &run_dir)
            .map_err(Failure::Egress)?;

    let mut child_env = envclean::child_env(
        &env.plain,
        &user,
        &base_url,
        kind,
        session_for_child.expose(),
    );
    egress.apply_env(&mut child_env);
    let plan = DropPlan {
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
    };
    let mut prepared =
        Prepared::new(command, child_env, plan, sys::isatty(0)).map_err(Failure::Prepare)?;
    prepared.seccomp = egress.seccomp();

    // Publish for `bottle-init exec` while still root. Not fatal: only `exec` depends on it
    // (and `exec` refuses to run without the egress record, so it never runs unlocked).
    let published = publish_state(&run_dir, &base_url, kind, &user, session_for_child);
    if published.is_some()
        && let Some((_, starttime)) = runinfo::proc_identity(sys::getpid())
        && let Err(e) = egress.publish(&run_dir, sys::getpid(), starttime)
    {
        log::warn!("cannot record the egress mode: {e}; `bottle-init exec` will refuse to run");
    }

    // 4. Fork; the child drops to the user and execs (see child::become_child).
    let child = match child::spawn(&prepared) {
        Ok(pid) => pid,
        Err(SpawnError::Child { pid, step, errno }) => {
            let _ = sys::waitpid_blocking(pid);
            remove_state(published.as_ref());
            return Err(exec_failure(&prepared.command, step, errno));
        }
        Err(e) => {
            remove_state(published.as_ref());
            return Err(Failure::Spawn(e));
        }
    };
    prepared.wipe_env();
    egress_setup::announce(&egress_plan, &egress, user.uid);
    log::debug!(
        "started {} as pid {child} (uid {}), proxy at {base_url}",
        prepared.command,
        user.uid
    );

    // 5. Drop our own privileges (CAP_KILL stays) BEFORE the proxy thread exists, because
    //    capability sets are per thread; then start serving.
    if let Err(e) = privilege::drop_parent() {
        let _ = sys::kill(child, libc::SIGKILL);
        let _ = sys::waitpid_blocking(child);
        remove_state(published.as_ref());
        return Err(Failure::ParentDrop(e));
    }
    let credential = proxy.credential_slot();
    if let Err(e) = proxy.spawn() {
        let _ = sys::kill(child, libc::SIGKILL);
        let _ = sys::waitpid_blocking(child);
        remove_state(published.as_ref());
        return Err(Failure::ProxyThread(e));
    }

    // Creating the thread may have changed our mask: musl unblocks its internal signals
    // 33 and 34 at the first pthread_create. Block everything again and make those harmless.
    sys::ignore_libc_internal_signals();
    if let Err(e) = sys::set_sigmask(sys::ALL_SIGNALS) {
        log::warn!("re-blocking signals after starting the proxy thread: {e}");
    }

    // 6. Init loop: forward signals, reap everything, stop leftovers after the child.
    let end = init::supervise(child, config.grace, pid1);
    // 7. Zero the real credential before exiting (the proxy thread answers 503 from now on).
    credential.wipe();
    remove_state(published.as_ref());
    Ok(end)
}

/// The address a client dials: a wildcard listen address is reached via loopback.
fn connect_addr(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, bound.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, bound.port()))
        }
        _ => bound,
    }
}

fn publish_state(
    dir: &std::path::Path,
    base_url: &str,
    kind: bottle_init::secret::CredentialKind,
    user: &user::ChildUser,
    session: Secret,
) -> Option<PathBuf> {
    let Some((comm, starttime)) = runinfo::proc_identity(sys::getpid()) else {
        log::warn!("cannot read /proc/self/stat; `bottle-init exec` will not find this instance");
        return None;
    };
    let info = RunInfo {
        pid: sys::getpid(),
        starttime,
        comm,
        base_url: base_url.to_string(),
        kind,
        user: user.clone(),
        session,
    };
    match runinfo::publish(dir, &info) {
        Ok(path) => Some(path),
        Err(e) => {
            log::warn!(
                "cannot publish state in {}: {e}; `bottle-init exec` will not work",
                dir.display()
            );
            None
        }
    }
}

/// Removes what PID 1 published for `exec`: the state file and the egress record beside it.
fn remove_state(path: Option<&PathBuf>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(p.with_file_name(bottle_init::egress::setup::EGRESS_FILE));
    }
}

fn exec_mode(env: &EnvSnapshot, command: &[OsString]) -> Result<ChildEnd, Failure> {
    check_privileges(Mode::Exec, &["SETUID", "SETGID", "SETPCAP"])?;
    Err(Failure::Exec(exec::run(env, command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_status_maps_to_exit_code() {
        for c in 0..=255 {
            assert_eq!(status_code(ChildEnd::Exited(c)), c as u8);
        }
        assert_eq!(status_code(ChildEnd::Signaled(libc::SIGTERM)), 143);
        assert_eq!(status_code(ChildEnd::Signaled(libc::SIGINT)), 130);
        assert_eq!(status_code(ChildEnd::Signaled(libc::SIGKILL)), 137);
    }

    #[test]
    fn failures_map_to_sysexits() {
        assert_eq!(exit_code_of(&Failure::Usage(UsageError("-x".into()))), 64);
        assert_eq!(
            exit_code_of(&Failure::Config(ConfigError::NoCredential)),
            78
        );
        assert_eq!(
            exit_code_of(&Failure::NotRoot {
                euid: 1000,
                mode: Mode::Exec
            }),
            77
        );
        assert_eq!(exit_code_of(&Failure::MissingCaps(vec!["KILL"])), 77);
        assert_eq!(
            exit_code_of(&exec_failure("x", Step::Exec, Errno(libc::ENOENT))),
            127
        );
        assert_eq!(
            exit_code_of(&exec_failure("x", Step::Exec, Errno(libc::EACCES))),
            126
        );
        assert_eq!(
            exit_code_of(&exec_failure("x", Step::SetResUid, Errno(libc::EPERM))),
            71
        );
        let f = Failure::Exec(ExecError::Failed {
            command: "x".into(),
            step: Step::Exec,
            errno: Errno(libc::ENOENT),
        });
        assert_eq!(exit_code_of(&f), 127);
        assert!(f.message().contains("command not found: x"));
        let f = Failure::Exec(ExecError::NotRunning { pid: 1 });
        assert_eq!(exit_code_of(&f), 69);
    }

    #[test]
    fn wildcard_listen_is_dialled_on_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:5".parse().unwrap()),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(
            connect_addr("[::]:5".parse().unwrap()),
            "[::1]:5".parse().unwrap()
        );
        assert_eq!(
            connect_addr("127.0.0.2:5".parse().unwrap()),
            "127.0.0.2:5".parse().unwrap()
        );
    }
}
