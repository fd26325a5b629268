//! The init side of the egress modes: what PID 1 (and `bottle-init exec`) does for each mode,
//! in the order of the start-up sequence.
//!
//! 1. [`validate`] (before any side effect): parse `BOTTLE_EGRESS`/`BOTTLE_ALLOW_HOSTS`; for
//!    both locked modes probe that seccomp filters can be installed ([`seccomp::probe`]: not
//!    under qemu-user, not on a kernel without them); for `allowlist` also check CAP_NET_ADMIN
//!    and find `nft`, so a container that cannot lock refuses before it binds, forks or writes
//!    anything.
//! 2. [`lock`] (step 3, as root, after the proxy listener is bound, before fork):
//!    `api-only` binds the API Unix socket and hands it to the proxy; `allowlist` installs and
//!    verifies the nftables rules for the child's uid and enables CONNECT in the proxy.
//! 3. [`Locked::apply_env`] edits the child's environment; [`Locked::seccomp`] is the filter
//!    the forked child installs as its last step before `execve` (both locked modes).
//! 4. [`Locked::publish`] records the mode for `bottle-init exec`, which calls [`joined`] and
//!    applies the same environment and filter (the nftables rules already cover its uid).
//!    `exec` refuses to run when that record is missing or belongs to another process, so it
//!    never runs an unlocked command in a locked container.
//!
//! Every error refuses the start: there is no half-locked mode.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::apisock::{self, SockError};
use super::env::{ApiEndpoint, EnvChange, child_env};
use super::mode::{EgressConfig, EgressMode};
use super::nft::{self, Nft, NftError, Ruleset};
use super::seccomp::{self, Filter, Policy, Unsupported};
use crate::proxy::Proxy;

/// sysexits(3): the exit codes a refused egress start uses.
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;
const EX_OSERR: u8 = 71;

/// The file next to the run-info state that records the egress mode for `bottle-init exec`.
pub const EGRESS_FILE: &str = "egress";

/// Why a locked mode cannot start. The message names what is missing and how to fix it.
#[derive(Debug)]
pub enum SetupError {
    Nft(NftError),
    Socket(SockError),
    /// A locked mode needs a seccomp filter and this system cannot install one.
    Seccomp {
        mode: EgressMode,
        why: Unsupported,
    },
    /// `allowlist` in the host's own network namespace without the explicit opt-in.
    HostNetwork,
}

impl SetupError {
    /// 77 for a missing privilege, 78 for configuration or image problems, 71 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            SetupError::Nft(e) => match e {
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
            SetupError::Socket(e) => match e {
                SockError::Unsafe { .. } => EX_CONFIG,
                _ => EX_OSERR,
            },
            // Like a kernel without nf_tables: this system cannot run the configured mode.
            SetupError::Seccomp { .. } | SetupError::HostNetwork => EX_CONFIG,
        }
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Nft(e) => e.fmt(f),
            SetupError::Socket(e) => write!(
                f,
                "{e}; bottle-init refuses to start without the API socket"
            ),
            SetupError::Seccomp { mode, why } => write!(
                f,
                "BOTTLE_EGRESS={mode} needs a seccomp filter, but {why}; run on a Linux kernel \
                 with seccomp (not under qemu-user), or choose another BOTTLE_EGRESS mode"
            ),
            SetupError::HostNetwork => write!(
                f,
                "BOTTLE_EGRESS=allowlist runs in the host's own network namespace (docker run \
                 --network host?): its nftables rules would filter uid 1000's traffic on the whole \
                 host, not only in this container; give the container its own network (drop \
                 --network host), or set {}=1 to accept that",
                super::mode::HOST_NETWORK_ENV
            ),
        }
    }
}

impl std::error::Error for SetupError {}

/// A validated egress configuration, ready for [`lock`].
#[derive(Debug)]
pub struct Plan {
    pub config: EgressConfig,
    nft: Option<Nft>,
}

/// Step 1: check that the configured mode can be installed here. No side effect.
pub fn validate(config: EgressConfig) -> Result<Plan, SetupError> {
    if config.mode.is_locked() {
        seccomp::probe().map_err(|why| SetupError::Seccomp {
            mode: config.mode,
            why,
        })?;
    }
    let nft = match config.mode {
        EgressMode::Allowlist => {
            // The rules go into the namespace we run in: the host's with --network host.
            match nft::in_initial_netns() {
                Some(true) if !config.host_network_ok => return Err(SetupError::HostNetwork),
                Some(true) => log::warn!(
                    "BOTTLE_EGRESS=allowlist in the host's network namespace \
                     ({}=1): the rules filter the child's uid on the whole host",
                    super::mode::HOST_NETWORK_ENV
                ),
                Some(false) => {}
                None => log::warn!(
                    "cannot tell whether this is the host's network namespace (/proc/sys/net \
                     unreadable); with --network host the allowlist rules filter the whole host"
                ),
            }
            nft::require_net_admin().map_err(SetupError::Nft)?;
            Some(Nft::locate().map_err(SetupError::Nft)?)
        }
        _ => None,
    };
    Ok(Plan { config, nft })
}

/// Where the API socket lives: `<parent of the run dir>/bottle-init-api` (default
/// `/run/bottle-init-api`). Not the run dir itself: that one is 0700 (it holds the session
/// secret) and the child must be able to reach the socket.
pub fn api_socket_dir(run_dir: &Path) -> PathBuf {
    run_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/run"))
        .join("bottle-init-api")
}

/// What a locked start set up, for the child's environment, its filter and `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub mode: EgressMode,
    /// `api-only`: the API socket path.
    pub socket: Option<PathBuf>,
    /// The proxy's TCP address as the child dials it.
    pub proxy: SocketAddr,
}

/// Step 3, as root, before fork: install the mode's mechanism and configure the proxy.
/// `proxy_addr`: the address the child dials (the listener's, wildcard mapped to loopback).
pub fn lock(
    plan: &Plan,
    proxy: Proxy,
    proxy_addr: SocketAddr,
    child_uid: u32,
    child_gid: u32,
    run_dir: &Path,
) -> Result<(Proxy, Locked), SetupError> {
    let mut locked = Locked {
        mode: plan.config.mode,
        socket: None,
        proxy: proxy_addr,
    };
    let proxy = match plan.config.mode {
        EgressMode::Open => proxy,
        EgressMode::ApiOnly => {
            let dir = api_socket_dir(run_dir);
            let (listener, path) =
                apisock::bind_api_socket(&dir, child_gid).map_err(SetupError::Socket)?;
            locked.socket = Some(path);
            proxy.with_unix_listener(listener, child_uid)
        }
        EgressMode::Allowlist => {
            // The bound address, not the dialled one: a wildcard listener would serve
            // CONNECT to the whole network, so Ruleset::new refuses anything not loopback.
            let rules = Ruleset::new(child_uid, &[proxy.local_addr()]).map_err(SetupError::Nft)?;
            let nft = match &plan.nft {
                Some(n) => n.clone(),
                None => Nft::locate().map_err(SetupError::Nft)?,
            };
            nft::require_net_admin().map_err(SetupError::Nft)?;
            nft.install(&rules).map_err(SetupError::Nft)?;
            proxy.with_connect_allowlist(plan.config.allow.clone())
        }
    };
    Ok((proxy, locked))
}

/// The start-up log line(s) for the mode, once the child runs (a failed start prints only its
/// one error line).
pub fn announce(plan: &Plan, locked: &Locked, child_uid: u32) {
    match locked.mode {
        EgressMode::Open => log::info!(
            "BOTTLE_EGRESS=open: egress is not restricted; the child can reach any host \
             (set BOTTLE_EGRESS=api-only or allowlist to lock it down)"
        ),
        EgressMode::ApiOnly => log::info!(
            "BOTTLE_EGRESS=api-only: the child has no IP network (seccomp); the API is served on {}",
            locked
                .socket
                .as_deref()
                .map_or_else(|| "?".into(), |p| p.display().to_string())
        ),
        EgressMode::Allowlist => log::info!(
            "BOTTLE_EGRESS=allowlist: nftables rules installed and verified: uid {child_uid} may \
             reach only the proxy at {}; CONNECT allowed to [{}]",
            locked.proxy,
            plan.config.allow
        ),
    }
}

impl Locked {
    /// The environment changes for this mode.
    pub fn env_changes(&self) -> Vec<EnvChange> {
        match self.mode {
            EgressMode::Open => Vec::new(),
            EgressMode::ApiOnly => match &self.socket {
                Some(p) => child_env(Some(ApiEndpoint::Unix(p))),
                None => Vec::new(),
            },
            EgressMode::Allowlist => child_env(Some(ApiEndpoint::Tcp(self.proxy))),
        }
    }

    /// Apply [`Locked::env_changes`] to the child's environment.
    pub fn apply_env(&self, env: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        apply(env, &self.env_changes());
    }

    /// The filter the child installs last before `execve`: none in `open`. (`validate` has
    /// refused a locked mode where no filter exists, and `exec` refuses a missing one.)
    pub fn seccomp(&self) -> Option<Filter> {
        match self.mode {
            EgressMode::Open => None,
            EgressMode::ApiOnly => seccomp::for_policy(Policy::ApiOnly),
            EgressMode::Allowlist => seccomp::for_policy(Policy::Allowlist),
        }
    }

    fn to_text(&self, pid: i32, starttime: u64) -> String {
        let mut s = format!(
            "pid={pid}\nstarttime={starttime}\nmode={}\nproxy={}\n",
            self.mode, self.proxy
        );
        if let Some(p) = &self.socket {
            s.push_str(&format!("socket={}\n", p.display()));
        }
        s
    }

    fn parse(text: &str, pid: i32, starttime: u64) -> Result<Locked, String> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        let need = |k: &str| get(k).ok_or_else(|| format!("missing {k}"));
        if need("pid")? != pid.to_string() || need("starttime")? != starttime.to_string() {
            return Err("it belongs to another bottle-init process".into());
        }
        let mode = EgressMode::parse(Some(need("mode")?)).map_err(|e| e.to_string())?;
        let proxy = need("proxy")?
            .parse()
            .map_err(|_| "bad proxy".to_string())?;
        let socket = get("socket").map(PathBuf::from);
        if mode == EgressMode::ApiOnly && socket.is_none() {
            return Err("api-only without a socket".into());
        }
        Ok(Locked {
            mode,
            socket,
            proxy,
        })
    }

    /// Record the mode in `run_dir` (already created 0700 by the run-info publisher) for
    /// `bottle-init exec`: root-owned 0600, written to a fresh file and renamed into place.
    pub fn publish(&self, run_dir: &Path, pid: i32, starttime: u64) -> std::io::Result<PathBuf> {
        crate::runinfo::write_private(
            run_dir,
            EGRESS_FILE,
            self.to_text(pid, starttime).as_bytes(),
        )
    }
}

/// For `bottle-init exec`: the mode PID 1 (`pid`, `starttime`) recorded. An error means exec
/// must refuse (never fall back to `open`).
pub fn joined(run_dir: &Path, pid: i32, starttime: u64) -> Result<Locked, String> {
    let path = run_dir.join(EGRESS_FILE);
    let bytes = crate::runinfo::read_private(run_dir, EGRESS_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    Locked::parse(&text, pid, starttime).map_err(|m| format!("{}: {m}", path.display()))
}

/// Apply changes to an environment list: `Force` replaces (or adds), `Default` adds when
/// absent, `Unset` removes every occurrence.
pub fn apply(env: &mut Vec<(Vec<u8>, Vec<u8>)>, changes: &[EnvChange]) {
    for c in changes {
        match c {
            EnvChange::Force(k, v) => {
                env.retain(|(n, _)| n != k.as_bytes());
                env.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
            EnvChange::Default(k, v) => {
                if !env.iter().any(|(n, _)| n == k.as_bytes()) {
                    env.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
                }
            }
            EnvChange::Unset(k) => env.retain(|(n, _)| n != k.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn apply_force_default_unset() {
        let mut env = vec![
            kv("ANTHROPIC_BASE_URL", "http://127.0.0.1:1"),
            kv("HTTPS_PROXY", "http://evil"),
            kv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "0"),
        ];
        let l = Locked {
            mode: EgressMode::ApiOnly,
            socket: Some("/run/bottle-init-api/api.sock".into()),
            proxy: "127.0.0.1:1".parse().unwrap(),
        };
        l.apply_env(&mut env);
        let get = |k: &str| {
            env.iter()
                .filter(|(n, _)| n == k.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("ANTHROPIC_BASE_URL"), ["http://localhost"]);
        assert_eq!(
            get("ANTHROPIC_UNIX_SOCKET"),
            ["/run/bottle-init-api/api.sock"]
        );
        assert!(get("HTTPS_PROXY").is_empty());
        // The user's own choice is kept.
        assert_eq!(get("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), ["0"]);
        assert_eq!(
            get("CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL"),
            ["1"]
        );
        assert_eq!(l.seccomp().map(|f| f.policy), Some(Policy::ApiOnly));
        let l = Locked {
            mode: EgressMode::Allowlist,
            ..l
        };
        assert_eq!(l.seccomp().map(|f| f.policy), Some(Policy::Allowlist));
    }

    #[test]
    fn open_changes_nothing_and_has_no_filter() {
        let l = Locked {
            mode: EgressMode::Open,
            socket: None,
            proxy: "127.0.0.1:1".parse().unwrap(),
        };
        let mut env = vec![kv("A", "b")];
        l.apply_env(&mut env);
        assert_eq!(env, vec![kv("A", "b")]);
        assert!(l.seccomp().is_none());
    }

    #[test]
    fn record_round_trips_and_is_bound_to_the_process() {
        let l = Locked {
            mode: EgressMode::Allowlist,
            socket: None,
            proxy: "127.0.0.1:4242".parse().unwrap(),
        };
        let text = l.to_text(1, 77);
        assert_eq!(Locked::parse(&text, 1, 77).unwrap(), l);
        assert!(Locked::parse(&text, 1, 78).is_err());
        assert!(Locked::parse(&text, 2, 77).is_err());
        assert!(
            Locked::parse(
                "pid=1\nstarttime=77\nmode=api-only\nproxy=127.0.0.1:1\n",
                1,
                77
            )
            .is_err()
        );
    }

    #[test]
    fn socket_dir_is_beside_the_run_dir() {
        assert_eq!(
            api_socket_dir(Path::new("/run/bottle-init")),
            Path::new("/run/bottle-init-api")
        );
        assert_eq!(
            api_socket_dir(Path::new("/tmp/x/run")),
            Path::new("/tmp/x/bottle-init-api")
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(SetupError::Nft(NftError::MissingNetAdmin).exit_code(), 77);
        assert_eq!(
            SetupError::Nft(NftError::NftNotFound { tried: vec![] }).exit_code(),
            78
        );
        assert_eq!(
            SetupError::Nft(NftError::VerifyFailed {
                missing: "x".into()
            })
            .exit_code(),
            71
        );
        let e = SetupError::Seccomp {
            mode: EgressMode::ApiOnly,
            why: Unsupported::Kernel(crate::sys::Errno(libc::ENOSYS)),
        };
        assert_eq!(e.exit_code(), 78);
        let m = e.to_string();
        assert!(
            m.contains("BOTTLE_EGRESS=api-only") && m.contains("qemu-user"),
            "{m}"
        );
        assert!(!m.contains("Docker's seccomp profile"), "{m}");
        assert_eq!(SetupError::HostNetwork.exit_code(), 78);
        let m = SetupError::HostNetwork.to_string();
        assert!(m.contains("--network host") && m.contains("BOTTLE_INSECURE_HOST_NETWORK=1"));
    }
}
