//! The start-up sequences, read top to bottom. [`main`] takes the process in hand (steps 1
//! and 2), then runs PID 1's sequence, `run` (steps 3 to 10, numbered as in the README's
//! "How it works"), or `bottle-init exec`'s, `exec`. Every failure is one `Failure` variant;
//! its exit code and its line are decided in `crate::failure`, and only there.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::thread::JoinHandle;

use crate::child::{self, ChildTerminal};
use crate::cli::{self, Cli, Mode};
use crate::config::{self, Common, Config, CredentialSource};
use crate::egress::lock::{self, Locked};
use crate::failure::{Exit, Failure};
use crate::fdlimit::{self, NoFile};
use crate::proxy::{Proxy, ProxyConfig};
use crate::recipe::ChildSpec;
use crate::record::{self, Identity, Published, RunRecord};
use crate::relay::{self, Pty};
use crate::scrub::{self, EnvSnapshot};
use crate::secret::{Credential, Secret};
use crate::status::{self, StatusServer};
use crate::user::ChildUser;
use crate::{check, home, init, logging, privilege, secretfile, sys, user};

/// The proxy thread's name (the panic hook and the init loop's watch use it).
const PROXY_THREAD: &str = "proxy";
/// At exit, how long queued log lines may take to reach a (possibly stopped) stderr.
const LOG_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The whole of bottle-init: the binary only calls this.
pub fn main() -> ExitCode {
    // 1. Block every signal before any thread exists: a signal unblocked in some thread can be
    //    delivered there and lost. The init loop collects them with sigtimedwait. Then not
    //    dumpable, before the credential is touched: /proc/self/* becomes root-owned and
    //    ptrace attach is refused (a hardening layer, so a failure is only logged: the scrub
    //    is what removes the token from /proc/1/environ).
    if let Err(e) = sys::set_sigmask(sys::ALL_SIGNALS) {
        return report(Failure::SignalSetup(e));
    }
    let dumpable = sys::set_dumpable(false);
    // 2. Take the credentials out of the environment: one locked copy each, the original
    //    environment block overwritten. This snapshot is the only read of the environment.
    let env = scrub::capture_and_scrub(&config::SECRET_VARS);
    let common = Common::from_env(&env);
    init_logging(common.log.as_deref(), common.log_format);
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
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Status { json }) => status(env, &common, json),
        Ok(Cli::Start { mode, command }) => match mode {
            Mode::Run => run(env, &common, &command),
            // (cli::parse never makes a `Start` in `Mode::Check`: `check` is `Cli::Check`.)
            Mode::Exec | Mode::Check => exec(env, &common, &command),
        },
        Ok(Cli::Check { json, probe }) => check(env, &common, json, probe.as_deref()),
        Ok(Cli::CheckChild { mode, probe }) => {
            return ExitCode::from(check::probe::run(&env, &mode, &probe));
        }
    };
    let code = match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(f) => report(f),
    };
    logging::finish(LOG_DRAIN);
    code
}

/// PID 1: steps 3 to 10 of the sequence (README, "How it works").
fn run(mut env: EnvSnapshot, common: &Common, command: &[OsString]) -> Result<Exit, Failure> {
    // 3. Validate everything before any side effect, so a refusal leaves nothing behind: root
    //    with the capabilities the drop and the forwarding need; no other bottle-init running
    //    here (`docker exec C /bottle-init CMD`, without `exec`, must not touch PID 1's files,
    //    socket or rules); the configuration; that the egress mode can be installed here; the
    //    child user.
    check_privileges(Mode::Run)?;
    let run_dir = record::run_dir(&common.run_dir);
    if let Some(pid) = record::other_live_init(&run_dir) {
        return Err(Failure::AlreadyRunning { pid, dir: run_dir });
    }
    let config = Config::from_env(&mut env).map_err(Failure::Config)?;
    let egress = lock::check(config.egress.clone()).map_err(Failure::Egress)?;
    let mut user = user::lookup(&config.user).map_err(Failure::User)?;
    warn_about(&config);

    // 4. Secrets, as root and not dumpable: the credential (a secret file is read now, its
    //    permissions checked on the opened file against the child user), the extra CA roots,
    //    a fresh session secret. Then a uid without a passwd entry gets its private home (else
    //    HOME stays /root, which it cannot write), before binding, so a refusal leaves no
    //    listener behind.
    let credential = read_credential(config.credential, &user, config.insecure_secret_file)?;
    let kind = credential.kind;
    let extra_roots_pem = read_ca(config.upstream_ca.as_deref())?;
    let session = Secret::random_session().map_err(Failure::SessionSecret)?;
    home::ensure(&mut user).map_err(Failure::Home)?;

    // 5. Bind: the proxy needs two descriptors per client, so raise our soft fd limit to the
    //    hard limit (the child gets the original back before its execve); bind the listener
    //    before forking, so the child can connect at once.
    let nofile = raise_nofile();
    let proxy = Proxy::bind(
        config.listen,
        ProxyConfig {
            upstream: config.upstream,
            extra_roots_pem,
            credential,
            session_secret: session.clone(),
        },
    )
    .map_err(Failure::Proxy)?
    .with_usage_limits(config.usage_limits);
    let dialled = connect_addr(proxy.local_addr());

    // 6. Lock egress, still root and before fork (api-only: the API socket; allowlist: the
    //    nftables rules, read back), and give the proxy what locking made. Then publish the
    //    run record for `bottle-init exec`; the guard removes it on every way out.
    let api_dir = lock::api_socket_dir(&run_dir);
    let mut locked = lock::lock(egress, proxy.local_addr(), user.uid, user.gid, &api_dir)
        .map_err(Failure::Egress)?;
    let proxy = serve_locked(proxy, &mut locked, user.uid);
    let child_uid = user.uid;
    let spec = ChildSpec {
        user,
        kind,
        session,
        proxy: dialled,
        egress: locked.mode,
        api_socket: locked.api_socket.clone(),
    };
    let original_nofile = nofile.map(|(original, _)| original);
    let mut prepared = spec
        .prepare(command, &env.plain, pid1_terminal(), original_nofile)
        .map_err(Failure::Prepare)?;
    let _published = publish(&run_dir, spec);
    let status = bind_status(&run_dir, _published.is_some());

    // 7. Spawn: the child drops to the user and execs (child::become_child); until it is
    //    supervised, the guard kills and reaps it on any error. Not PID 1 (tests, `docker run
    //    --init`): become a subreaper first, so orphans still come back to us. From the fork
    //    on the child may stop our shared terminal: log lines queue instead of blocking.
    let pid1 = sys::getpid() == 1;
    if !pid1 {
        sys::set_child_subreaper().map_err(Failure::Subreaper)?;
    }
    logging::hold();
    let child = child::spawn(&prepared).map_err(|e| Failure::spawn(&prepared.command, e))?;
    prepared.wipe_env();
    log::debug!(
        "started {} as pid {} (uid {child_uid}), proxy at http://{dialled}",
        prepared.command,
        child.pid()
    );

    // 8. Drop: leave the start directory (often the /workspace bind mount; the child already
    //    started there, and every path used from here on is absolute), keep only CAP_KILL,
    //    BEFORE any thread exists because capability sets are per thread, then start the log
    //    writer and the proxy thread.
    if let Err(e) = sys::chdir(c"/") {
        log::warn!("chdir(\"/\") failed: {e}");
    }
    lock::announce(&locked, dialled, child_uid);
    privilege::drop_parent().map_err(Failure::ParentDrop)?;
    logging::start_writer().map_err(Failure::LogThread)?;
    let credential = proxy.credential_slot();
    let _status_socket = status.map(|(server, bound)| {
        if let Err(e) = server.spawn(proxy.stats()) {
            log::warn!("cannot start the status thread: {e}; `bottle-init status` will not work");
        }
        bound
    });
    let proxy_thread = start_proxy(proxy, nofile.map(|(_, now)| now))?;

    // 9. Supervise: forward signals, reap everything, stop leftovers after the command; a
    //    stopped proxy thread stops the command too (exit 70).
    let proxy_stopped = || stopped(&proxy_thread);
    let ended = init::supervise(child.release(), config.grace, pid1, &proxy_stopped);

    // 10. Wipe: zero the real credential before exiting (the proxy thread answers 503 from
    //     now on); the record's guard then removes it.
    credential.wipe();
    Ok(match ended.proxy_stopped {
        Some(_) => Exit::ProxyStopped,
        None => Exit::Child(ended.child),
    })
}

/// `bottle-init exec`: a command in a running bottle-init's container, made from the same
/// recipe as PID 1's child (the record PID 1 published), with its own session and, on a
/// terminal, its own pty, relayed by this process.
fn exec(mut env: EnvSnapshot, common: &Common, command: &[OsString]) -> Result<Exit, Failure> {
    // Validate: root with SETUID, SETGID, SETPCAP and KILL (the relay, which stays root,
    // forwards signals to the uid-1000 command).
    check_privileges(Mode::Exec)?;
    // Join: `docker exec` handed us the container's credentials; exec needs none (PID 1's
    // proxy holds the real one), so dropping them zeroes them. PID 1's record gives the rest,
    // once its identity is checked and its egress record found (never an unlocked command).
    env.secrets.clear();
    let run_dir = record::run_dir(&common.run_dir);
    let record = record::read(&run_dir).map_err(|e| Failure::join(e, run_dir))?;
    let sigfd = sys::signalfd(sys::ALL_SIGNALS).map_err(Failure::SignalSetup)?;
    let user = &record.child.user;
    let mut pty = Pty::open(relay::caller_ttys(), user.uid, user.gid).map_err(Failure::Pty)?;
    let terminal = match &pty {
        Some(p) => ChildTerminal::Pty {
            slave: p.slave,
            fds: p.fds,
        },
        None => ChildTerminal::Session,
    };
    let mut prepared = record
        .child
        .prepare(command, &env.plain, terminal, None)
        .map_err(Failure::Prepare)?;
    drop(record);
    // Spawn, as step 7 (the guard kills and reaps the command on any error).
    let child = child::spawn(&prepared).map_err(|e| Failure::spawn(&prepared.command, e))?;
    prepared.wipe_env();
    if let Some(p) = pty.as_mut() {
        sys::close(p.slave);
        p.slave = -1;
    }
    // Drop, as step 8: stay root (a uid-1000 process can neither ptrace nor signal us) but
    // keep only CAP_KILL; single-threaded, so the drop covers us. Do not hold the caller's
    // directory (often a bind mount) while relaying.
    privilege::drop_parent().map_err(Failure::ParentDrop)?;
    let _ = sys::chdir(c"/");
    // Relay until the command exits; its status is ours.
    Ok(Exit::Child(relay::supervise(child.release(), sigfd, pty)))
}

/// `bottle-init check`: validate `--probe`, root, join PID 1's record as `exec` does (69 when
/// there is none), run every check (`crate::check`) and print the report; 1 if one failed.
fn check(
    mut env: EnvSnapshot,
    common: &Common,
    json: bool,
    probe: Option<&str>,
) -> Result<Exit, Failure> {
    let target = check::parse_probe(probe).map_err(Failure::BadProbe)?;
    check_privileges(Mode::Check)?;
    let run_dir = record::run_dir(&common.run_dir);
    let record = record::read(&run_dir).map_err(|e| Failure::join(e, run_dir))?;
    // A short-lived command, not an init: Ctrl-C and SIGTERM end it as usual.
    let _ = sys::set_sigmask(sys::NO_SIGNALS);
    let report = check::run(&record, &mut env, &target);
    let text = if json { report.json() } else { report.lines() };
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, text.as_bytes());
    let _ = std::io::Write::flush(&mut out);
    Ok(Exit::Checked {
        all_ok: report.ok(),
    })
}

/// `bottle-init status`: asks the running PID 1 (found through its record, like `exec`) for
/// its counters and prints them. Needs no credential: the ones `docker exec` handed over are
/// zeroed with `env`.
fn status(env: EnvSnapshot, common: &Common, json: bool) -> Result<Exit, Failure> {
    drop(env);
    let euid = sys::geteuid();
    if euid != 0 {
        return Err(Failure::StatusNotRoot { euid });
    }
    let run_dir = record::run_dir(&common.run_dir);
    let record = record::read(&run_dir).map_err(|e| Failure::join(e, run_dir.clone()))?;
    drop(record);
    let answer = status::ask(&run_dir, json).map_err(|e| Failure::Status {
        dir: run_dir,
        err: e.0,
    })?;
    print!("{answer}");
    Ok(Exit::Child(sys::ChildEnd::Exited(0)))
}

fn report(f: Failure) -> ExitCode {
    logging::error_line(&f.message());
    ExitCode::from(f.exit_code())
}

fn init_logging(spec: Option<&str>, format: logging::Format) {
    // On a terminal the child (interactive claude) owns the screen: info lines from the proxy
    // would be drawn into its full-screen UI. Unless asked, log only warnings there.
    let default = if sys::isatty(2) {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Info
    };
    logging::init(spec, default, format);
}

/// Root, with the capabilities the drop (SETUID, SETGID, SETPCAP) and the signal forwarding
/// to a uid-1000 process (KILL) need.
fn check_privileges(mode: Mode) -> Result<(), Failure> {
    let euid = sys::geteuid();
    if euid != 0 {
        return Err(Failure::NotRoot { euid, mode });
    }
    let missing = privilege::missing_start_caps().map_err(Failure::CapRead)?;
    if !missing.is_empty() {
        return Err(Failure::MissingCaps(missing));
    }
    Ok(())
}

/// Warnings for what the configuration accepted but the user should know.
fn warn_about(config: &Config) {
    if config.auth_token_ignored {
        log::warn!(
            "{} is set but is not an accepted credential; it was removed (use {} or {})",
            config::ENV_AUTH_TOKEN,
            config::ENV_OAUTH,
            config::ENV_API_KEY
        );
    }
    let limits = config.usage_limits;
    if let Some(n) = limits.requests_per_minute {
        log::info!(
            "proxy: at most {n} requests per minute are forwarded (BOTTLE_MAX_REQUESTS_PER_MINUTE)"
        );
    }
    if let Some(n) = limits.tokens {
        log::info!(
            "proxy: at most {n} input and output tokens are used in this run (BOTTLE_MAX_TOKENS)"
        );
    }
    if config.insecure_listen {
        log::warn!(
            "BOTTLE_LISTEN={} is not a loopback address (allowed by {}=1): the proxy accepts the session secret from the network",
            config.listen,
            config::ENV_INSECURE_LISTEN
        );
    }
}

/// The credential: already captured from the environment, or read from its secret file now
/// (root, not dumpable; the permissions are checked on the opened file against the user).
fn read_credential(
    source: CredentialSource,
    user: &ChildUser,
    insecure: bool,
) -> Result<Credential, Failure> {
    match source {
        CredentialSource::Env { kind, secret } => Ok(Credential { kind, secret }),
        CredentialSource::File { var, kind, path } => {
            let (secret, exposed) =
                secretfile::read(&path, user, insecure).map_err(|err| Failure::SecretFile {
                    var,
                    path: path.clone(),
                    err,
                })?;
            if let Some(e) = exposed {
                log::warn!("{}", secretfile::insecure_warning(var, &path, &e, user.uid));
            }
            Ok(Credential { kind, secret })
        }
    }
}

/// `BOTTLE_UPSTREAM_CA`'s PEM, read as root.
fn read_ca(path: Option<&Path>) -> Result<Option<Vec<u8>>, Failure> {
    path.map(|p| {
        std::fs::read(p).map_err(|err| Failure::CaFile {
            path: p.to_path_buf(),
            err,
        })
    })
    .transpose()
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: `(the limit before, the soft limit now)`.
/// A failure only means the proxy sizes itself to the current limit.
fn raise_nofile() -> Option<(NoFile, u64)> {
    match fdlimit::raise_soft_to_hard() {
        Ok(raised) => Some(raised),
        Err(e) => {
            log::warn!(
                "cannot raise RLIMIT_NOFILE: {e}; the proxy sizes its limits to the current one"
            );
            None
        }
    }
}

/// PID 1's command leads its own process group; on a terminal, the terminal's foreground one.
fn pid1_terminal() -> ChildTerminal {
    if sys::isatty(0) {
        ChildTerminal::Foreground
    } else {
        ChildTerminal::Group
    }
}

/// Sizes the proxy to the fd limit (the raised one, else the current one) and starts its
/// thread. Creating a thread may change our mask (musl unblocks its internal signals 33 and
/// 34 at the first pthread_create): everything is blocked again and those made harmless.
fn start_proxy(proxy: Proxy, soft: Option<u64>) -> Result<JoinHandle<()>, Failure> {
    let soft = soft.or_else(|| fdlimit::current().ok().map(|l| l.soft));
    let proxy = match soft {
        Some(soft) => proxy.fit_to_fd_limit(soft),
        None => proxy,
    };
    let thread = proxy.spawn().map_err(Failure::ProxyThread)?;
    sys::ignore_libc_internal_signals();
    if let Err(e) = sys::set_sigmask(sys::ALL_SIGNALS) {
        log::warn!("re-blocking signals after starting the proxy thread: {e}");
    }
    Ok(thread)
}

/// Why the proxy thread is gone, once it is (it never returns by design).
fn stopped(thread: &JoinHandle<()>) -> Option<String> {
    thread.is_finished().then(|| {
        logging::panic_of(PROXY_THREAD)
            .map_or_else(|| "it returned".to_string(), |m| format!("panic: {m}"))
    })
}

/// The proxy serves what locking made: api-only's socket (to the child's uid only) and
/// allowlist's CONNECT policy.
fn serve_locked(mut proxy: Proxy, locked: &mut Locked, child_uid: u32) -> Proxy {
    if let Some(listener) = locked.api_listener.take() {
        proxy = proxy.with_unix_listener(listener, child_uid);
    }
    if let Some(allow) = &locked.connect_allow {
        proxy = proxy.with_connect_allowlist(allow.clone());
    }
    proxy
}

/// Publishes the run record for `exec`. Not fatal: only `exec` depends on it, and `exec`
/// refuses to run without it, so it never runs a command unlocked.
fn publish(dir: &Path, child: ChildSpec) -> Option<Published> {
    let Some(identity) = Identity::current() else {
        log::warn!("cannot read /proc/self/stat; `bottle-init exec` will not find this instance");
        return None;
    };
    record::publish(dir, &RunRecord { identity, child })
        .map_err(|e| {
            log::warn!(
                "cannot publish state in {}: {e}; `bottle-init exec` will not work",
                dir.display()
            )
        })
        .ok()
}

/// Binds the socket `bottle-init status` asks, next to the run record (whose publication made
/// the directory root-only). Not fatal, like the record.
fn bind_status(dir: &Path, published: bool) -> Option<(StatusServer, status::Bound)> {
    if !published {
        return None;
    }
    status::bind(dir)
        .map_err(|e| {
            log::warn!(
                "cannot bind {}/{}: {e}; `bottle-init status` will not work",
                dir.display(),
                status::SOCKET_FILE
            )
        })
        .ok()
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn paths_stay_absolute_after_leaving_the_start_directory() {
        let p: std::path::PathBuf = record::run_dir(Path::new("relative/run"));
        assert!(p.is_absolute() && p.ends_with("relative/run"), "{p:?}");
    }
}
