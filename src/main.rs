//! bottle-init: entry point. The start-up sequence reads top to bottom in [`main`] and
//! [`run`]; exit-code policy lives here and only here ([`Failure::exit_code`],
//! [`status_code`]).

#![deny(unsafe_code)]

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use bottle_init::child::{self, ChildTerminal, PrepareError, Prepared, SpawnError};
use bottle_init::cli::{self, Cli, Mode, UsageError};
use bottle_init::config::{self, Config, ConfigError, CredentialSource};
use bottle_init::egress::setup::{self as egress_setup, SetupError};
use bottle_init::exec::{self, ExecError};
use bottle_init::home::{self, HomeError};
use bottle_init::logging;
use bottle_init::privilege::{self, DropPlan, ParentDropError, Step};
use bottle_init::proxy::{Proxy, ProxyConfig, ProxyError};
use bottle_init::runinfo::{self, RunInfo};
use bottle_init::scrub::{self, EnvSnapshot};
use bottle_init::secret::{Credential, Secret};
use bottle_init::secretfile::{self, SecretFileError};
use bottle_init::sys::{self, ChildEnd, Errno};
use bottle_init::user::{self, UserError};
use bottle_init::{envclean, init};

/// sysexits(3) codes for start-up failures.
const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
/// The proxy thread stopped while the command ran (bottle-init's own failure).
const EX_SOFTWARE: u8 = 70;
const EX_OSERR: u8 = 71;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

/// Everything that stops bottle-init before or instead of the child's own exit status.
/// One variant per failure site; [`Failure::message`] is the single stderr line.
#[derive(Debug)]
enum Failure {
    Usage(UsageError),
    /// A bottle-init already runs here (its state names a live bottle-init that is not us):
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
    LogThread(std::io::Error),
    /// `exec`: no pty for the command.
    Pty(Errno),
    /// `exec`: no state of a running bottle-init in the run directory.
    NoInit {
        dir: PathBuf,
        reason: String,
    },
    /// `exec`: the recorded bottle-init is not running any more.
    InitGone {
        pid: i32,
    },
    /// A BOTTLE_EGRESS mode could not be validated or installed (never runs half locked).
    Egress(SetupError),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::AlreadyRunning { .. } => EX_USAGE,
            Failure::NotRoot { .. } | Failure::MissingCaps(_) => EX_NOPERM,
            Failure::Config(_)
            | Failure::User(_)
            | Failure::Home(_)
            | Failure::SecretFile { .. }
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
            | Failure::ProxyThread(_)
            | Failure::LogThread(_)
            | Failure::Pty(_) => EX_OSERR,
            Failure::NoInit { .. } | Failure::InitGone { .. } => EX_UNAVAILABLE,
            Failure::Egress(e) => e.exit_code(),
        }
    }

    /// `<what is wrong>; <how to fix>`. Never contains a secret: no variant holds one.
    fn message(&self) -> String {
        match self {
            Failure::Usage(e) => e.to_string(),
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
            Failure::Prepare(e) => e.to_string(),
            Failure::Spawn(SpawnError::Pipe(e)) => {
                format!("cannot create a pipe: {e}; this is a system problem")
            }
            Failure::Spawn(SpawnError::Fork(e)) => {
                format!("cannot fork: {e}; raise the container's pids limit or memory")
            }
            Failure::Spawn(SpawnError::Child {
                step: Step::Seccomp,
                errno,
                ..
            })
            | Failure::ChildSetup {
                step: Step::Seccomp,
                errno,
            } => format!(
                "preparing the child failed at {}: {}",
                Step::Seccomp.describe(),
                bottle_init::egress::seccomp::explain(*errno)
            ),
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
            Failure::LogThread(e) => {
                format!("cannot start the log writer thread: {e}; this is a system problem")
            }
            Failure::Pty(e) => format!(
                "cannot open a new terminal (/dev/ptmx) for the command: {e}; run `docker exec` without -t, or mount devpts"
            ),
            Failure::NoInit { dir, reason } => format!(
                "no running bottle-init found ({reason}); `bottle-init exec` only works in a container whose PID 1 is bottle-init, with the same BOTTLE_RUN_DIR (here {}, default {})",
                dir.display(),
                runinfo::DEFAULT_RUN_DIR
            ),
            Failure::InitGone { pid } => format!(
                "the bottle-init recorded as pid {pid} is not running; start the container with bottle-init as its entrypoint"
            ),
            Failure::Egress(e) => e.to_string(),
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
    failure.exit_code()
}

/// `exec`'s errors as failures: those it shares with PID 1's start map to the same ones.
fn exec_error(e: ExecError) -> Failure {
    match e {
        ExecError::Prepare(e) => Failure::Prepare(e),
        ExecError::SignalFd(e) => Failure::SignalSetup(e),
        ExecError::Pty(e) => Failure::Pty(e),
        ExecError::Spawn(e) => Failure::Spawn(e),
        ExecError::Failed {
            command,
            step,
            errno,
        } => exec_failure(&command, step, errno),
        ExecError::ParentDrop(e) => Failure::ParentDrop(e),
        ExecError::NoState { dir, reason } => Failure::NoInit { dir, reason },
        ExecError::NotRunning { pid } => Failure::InitGone { pid },
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
    let common = config::Common::from_env(&env);
    init_logging(common.log.as_deref());
    // A panic writes through the logger (std's hook writes to stderr directly, which can
    // block); the proxy thread's panic is reported by the init loop's one line instead.
    logging::install_panic_hook(PROXY_THREAD);
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
            println!("bottle-init {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Start {
            mode: Mode::Exec,
            command,
        }) => exec_mode(&mut env, &common, &command).map(status_code),
        Ok(Cli::Start {
            mode: Mode::Run,
            command,
        }) => run(&mut env, &common, &command),
    };
    let code = match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => report(f),
    };
    logging::finish(LOG_DRAIN);
    code
}

/// The proxy thread's name (the panic hook and the init loop's watch use it).
const PROXY_THREAD: &str = "proxy";
/// At exit, how long queued log lines may take to reach a (possibly stopped) stderr.
const LOG_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

fn report(f: Failure) -> ExitCode {
    logging::error_line(&f.message());
    ExitCode::from(exit_code_of(&f))
}

fn init_logging(spec: Option<&str>) {
    // On a terminal the child (interactive claude) owns the screen: info lines from the proxy
    // would be drawn into its full-screen UI. Unless asked, log only warnings there.
    let default = if sys::isatty(2) {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Info
    };
    logging::init(spec, default);
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

/// The pid of another live bottle-init whose state is in `dir` (pid, name and start time
/// match), if any. A missing, unreadable or stale state file is no obstacle.
fn other_running_init(dir: &std::path::Path) -> Option<i32> {
    let info = runinfo::read(dir).ok()?;
    let live = runinfo::proc_identity(info.pid) == Some((info.comm.clone(), info.starttime));
    (live && info.pid != sys::getpid()).then_some(info.pid)
}

/// PID 1 mode: steps 3 to 8 of the sequence (README, "How it works"). Returns bottle-init's
/// exit code.
fn run(
    env: &mut EnvSnapshot,
    common: &config::Common,
    command: &[OsString],
) -> Result<u8, Failure> {
    // 3. Validate everything before any side effect.
    check_privileges(Mode::Run, &["SETUID", "SETGID", "SETPCAP", "KILL"])?;
    // A second init (`docker exec C /bottle-init CMD`, without `exec`) must not touch the
    // first one's run directory, socket or firewall: refuse before any side effect.
    let run_dir = runinfo::run_dir(&common.run_dir);
    if let Some(pid) = other_running_init(&run_dir) {
        return Err(Failure::AlreadyRunning { pid, dir: run_dir });
    }
    let config = Config::from_env(env).map_err(Failure::Config)?;
    // A mode that cannot be installed here refuses before any side effect.
    let egress_plan = egress_setup::validate(config.egress.clone()).map_err(Failure::Egress)?;
    if config.auth_token_ignored {
        log::warn!(
            "{} is set but is not an accepted credential; it was removed (use {} or {})",
            config::ENV_AUTH_TOKEN,
            config::ENV_OAUTH,
            config::ENV_API_KEY
        );
    }
    let mut user = user::lookup(&config.user).map_err(Failure::User)?;
    if config.insecure_listen {
        log::warn!(
            "BOTTLE_LISTEN={} is not a loopback address (allowed by {}=1): the proxy accepts the session secret from the network",
            config.listen,
            config::ENV_INSECURE_LISTEN
        );
    }
    // The proxy needs two descriptors per client: raise our soft fd limit to the hard limit
    // (the child gets the original back before its execve).
    let nofile = match bottle_init::fdlimit::raise_soft_to_hard() {
        Ok((original, now)) => Some((original, now)),
        Err(e) => {
            log::warn!(
                "cannot raise RLIMIT_NOFILE: {e}; the proxy sizes its limits to the current one"
            );
            None
        }
    };
    let pid1 = sys::getpid() == 1;
    if !pid1 {
        // Not PID 1 (tests, `docker run --init`): orphans must still come back to us.
        sys::set_child_subreaper().map_err(Failure::Subreaper)?;
    }

    // Credential (env, already captured) or secret file (read now: root, not dumpable; its
    // permissions are checked on the opened file against the child user).
    let credential = match config.credential {
        CredentialSource::Env { kind, secret } => Credential { kind, secret },
        CredentialSource::File { var, kind, path } => {
            let (secret, exposed) = secretfile::read(&path, &user, config.insecure_secret_file)
                .map_err(|err| Failure::SecretFile {
                    var,
                    path: path.clone(),
                    err,
                })?;
            if let Some(e) = exposed {
                log::warn!("{}", secretfile::insecure_warning(var, &path, &e, user.uid));
            }
            Credential { kind, secret }
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
    // 3b. A uid without a passwd entry gets a private home (else HOME stays the container's
    //     /root, which it cannot write). Before binding, so a refusal leaves nothing behind.
    home::ensure(&mut user).map_err(Failure::Home)?;

    // 4. Bind the listener before forking, so the child can connect at once.
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
    // 4b. Egress lockdown (still root, before fork): the API socket (api-only) or the
    //     nftables rules for the child's uid (allowlist), installed and verified.
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
    // The command leads its own process group; on a terminal, the terminal's foreground one.
    let terminal = if sys::isatty(0) {
        ChildTerminal::Foreground
    } else {
        ChildTerminal::Group
    };
    let mut prepared =
        Prepared::new(command, child_env, plan, terminal).map_err(Failure::Prepare)?;
    prepared.seccomp = egress.seccomp();
    prepared.nofile = nofile.map(|(original, _)| original);

    // Publish for `bottle-init exec` while still root. Not fatal: only `exec` depends on it
    // (and `exec` refuses to run without the egress record, so it never runs unlocked).
    let published = publish_state(&run_dir, &base_url, kind, &user, session_for_child);
    if published.is_some()
        && let Some((_, starttime)) = runinfo::proc_identity(sys::getpid())
        && let Err(e) = egress.publish(&run_dir, sys::getpid(), starttime)
    {
        log::warn!("cannot record the egress mode: {e}; `bottle-init exec` will refuse to run");
    }

    // 5. Fork; the child drops to the user and execs (see child::become_child). From here on
    //    the child may stop our shared terminal: log lines queue instead of blocking.
    logging::hold();
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
    // 6. Leave the start directory (often the /workspace bind mount) so PID 1 does not hold
    //     it for the container's life; the child already started there. Every path used
    //     from here on is absolute.
    if let Err(e) = sys::chdir(c"/") {
        log::warn!("chdir(\"/\") failed: {e}");
    }
    egress_setup::announce(&egress_plan, &egress, user.uid);
    log::debug!(
        "started {} as pid {child} (uid {}), proxy at {base_url}",
        prepared.command,
        user.uid
    );

    // 7. Drop our own privileges (CAP_KILL stays) BEFORE any thread exists, because
    //    capability sets are per thread; then start the log writer and the proxy.
    let abort = |f: Failure| {
        let _ = sys::kill(child, libc::SIGKILL);
        let _ = sys::waitpid_blocking(child);
        remove_state(published.as_ref());
        f
    };
    privilege::drop_parent().map_err(|e| abort(Failure::ParentDrop(e)))?;
    logging::start_writer().map_err(|e| abort(Failure::LogThread(e)))?;
    let credential = proxy.credential_slot();
    let fd_limit = nofile
        .map(|(_, now)| now)
        .or_else(|| bottle_init::fdlimit::current().ok().map(|l| l.soft));
    let proxy = match fd_limit {
        Some(soft) => proxy.fit_to_fd_limit(soft),
        None => proxy,
    };
    let proxy_thread = proxy.spawn().map_err(|e| abort(Failure::ProxyThread(e)))?;

    // Creating a thread may have changed our mask: musl unblocks its internal signals
    // 33 and 34 at the first pthread_create. Block everything again and make those harmless.
    sys::ignore_libc_internal_signals();
    if let Err(e) = sys::set_sigmask(sys::ALL_SIGNALS) {
        log::warn!("re-blocking signals after starting the proxy thread: {e}");
    }

    // 8. Init loop: forward signals, reap everything, stop leftovers after the child; a
    //    stopped proxy thread stops the command too (exit 70).
    let proxy_stopped = || {
        proxy_thread.is_finished().then(|| {
            logging::panic_of(PROXY_THREAD)
                .map_or_else(|| "it returned".to_string(), |m| format!("panic: {m}"))
        })
    };
    let ended = init::supervise(child, config.grace, pid1, &proxy_stopped);
    // 8b. Zero the real credential before exiting (the proxy thread answers 503 from now on).
    credential.wipe();
    remove_state(published.as_ref());
    Ok(match ended.proxy_stopped {
        Some(_) => EX_SOFTWARE,
        None => status_code(ended.child),
    })
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

/// Removes what PID 1 published for `exec`: the state file and the egress record beside it,
/// if the state still names this process (never another init's files).
fn remove_state(path: Option<&PathBuf>) {
    let Some(p) = path else { return };
    let Some(dir) = p.parent() else { return };
    let ours = runinfo::read(dir).is_ok_and(|i| {
        i.pid == sys::getpid()
            && runinfo::proc_identity(i.pid).is_some_and(|(_, start)| start == i.starttime)
    });
    if ours {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(p.with_file_name(bottle_init::egress::setup::EGRESS_FILE));
    }
}

fn exec_mode(
    env: &mut EnvSnapshot,
    common: &config::Common,
    command: &[OsString],
) -> Result<ChildEnd, Failure> {
    // CAP_KILL: the relay that stays root forwards signals to the uid-1000 command.
    check_privileges(Mode::Exec, &["SETUID", "SETGID", "SETPCAP", "KILL"])?;
    exec::run(env, &common.run_dir, command).map_err(exec_error)
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
        let f = exec_error(ExecError::Failed {
            command: "x".into(),
            step: Step::Exec,
            errno: Errno(libc::ENOENT),
        });
        assert_eq!(exit_code_of(&f), 127);
        assert!(f.message().contains("command not found: x"));
        let f = exec_error(ExecError::NotRunning { pid: 1 });
        assert_eq!(exit_code_of(&f), 69);
        let f = exec_error(ExecError::Pty(Errno(libc::ENOENT)));
        assert_eq!(exit_code_of(&f), 71);
        let f = Failure::AlreadyRunning {
            pid: 1,
            dir: "/run/bottle-init".into(),
        };
        assert_eq!(exit_code_of(&f), 64);
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
        assert_eq!(exit_code_of(&f), 71);
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
