//! Locking egress: the mechanisms PID 1 installs for each mode, in the order of the start-up
//! sequence. This module makes them and hands them back; main wires them into the proxy and
//! the child (it imports nothing of the proxy).
//!
//! 1. [`check`] (step 3, before any side effect): for both locked modes probe that seccomp
//!    filters can be installed ([`seccomp::probe`]: not under qemu-user, not on a kernel
//!    without them); for `allowlist` also refuse the host's network namespace, check
//!    CAP_NET_ADMIN and find `nft`, so a container that cannot lock refuses before it binds,
//!    forks or writes anything.
//! 2. [`lock`] (step 6, as root, after the proxy listener is bound, before fork): `api-only`
//!    binds the API Unix socket; `allowlist` installs the nftables rules for the child's uid
//!    and reads them back. [`Locked`] holds what the proxy needs of it: the socket's listener
//!    and path (the proxy serves it) and the allowlist (the proxy's CONNECT policy).
//!
//! The child's side of a mode (its environment and its seccomp filter) follows from the mode
//! alone, in `crate::recipe`, so PID 1's child and every `exec`'d command get the same.
//! Every error refuses the start: there is no half-locked mode.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::apisock::{self, SockError};
use super::mode::{AllowList, EgressConfig, EgressMode, HOST_NETWORK_ENV};
use super::nft::{self, Nft, NftError, Ruleset};
use super::seccomp::{self, Unsupported};

/// Why a locked mode cannot start. The message names what is missing and how to fix it.
#[derive(Debug)]
pub enum LockError {
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

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Nft(e) => e.fmt(f),
            LockError::Socket(e) => write!(
                f,
                "{e}; bottle-init refuses to start without the API socket"
            ),
            LockError::Seccomp { mode, why } => write!(
                f,
                "BOTTLE_EGRESS={mode} needs a seccomp filter, but {why}; run on a Linux kernel \
                 with seccomp (not under qemu-user), or choose another BOTTLE_EGRESS mode"
            ),
            LockError::HostNetwork => write!(
                f,
                "BOTTLE_EGRESS=allowlist runs in the host's own network namespace (docker run \
                 --network host?): its nftables rules would filter uid 1000's traffic on the whole \
                 host, not only in this container; give the container its own network (drop \
                 --network host), or set {HOST_NETWORK_ENV}=1 to accept that"
            ),
        }
    }
}

impl std::error::Error for LockError {}

/// A mode that [`check`] found installable here, ready for [`lock`].
#[derive(Debug)]
pub struct Checked {
    config: EgressConfig,
    nft: Option<Nft>,
}

/// Step 3: check that the configured mode can be installed here. No side effect.
pub fn check(config: EgressConfig) -> Result<Checked, LockError> {
    if config.mode.is_locked() {
        seccomp::probe().map_err(|why| LockError::Seccomp {
            mode: config.mode,
            why,
        })?;
    }
    let nft = match config.mode {
        EgressMode::Allowlist => {
            // The rules go into the namespace we run in: the host's with --network host.
            match nft::in_initial_netns() {
                Some(true) if !config.host_network_ok => return Err(LockError::HostNetwork),
                Some(true) => log::warn!(
                    "BOTTLE_EGRESS=allowlist in the host's network namespace \
                     ({HOST_NETWORK_ENV}=1): the rules filter the child's uid on the whole host"
                ),
                Some(false) => {}
                None => log::warn!(
                    "cannot tell whether this is the host's network namespace (/proc/sys/net \
                     unreadable); with --network host the allowlist rules filter the whole host"
                ),
            }
            nft::require_net_admin().map_err(LockError::Nft)?;
            Some(Nft::locate().map_err(LockError::Nft)?)
        }
        _ => None,
    };
    Ok(Checked { config, nft })
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

/// What [`lock`] made.
#[derive(Debug)]
pub struct Locked {
    pub mode: EgressMode,
    /// `api-only`: the API socket's listener (main hands it to the proxy, which serves it to
    /// the child's uid only) and its path (the child's `ANTHROPIC_UNIX_SOCKET`).
    pub api_listener: Option<UnixListener>,
    pub api_socket: Option<PathBuf>,
    /// `allowlist`: the hosts CONNECT may reach. (Its nftables rules need nothing more from
    /// PID 1 once read back: they stay for the container's life, nothing tears them down.)
    pub connect_allow: Option<AllowList>,
}

/// Step 6, as root, before fork: install the mode's mechanism. `bound`: the proxy
/// listener's own address (a wildcard one would serve CONNECT to the whole network, so the
/// ruleset refuses anything not loopback); `api_dir`: see [`api_socket_dir`].
pub fn lock(
    checked: Checked,
    bound: SocketAddr,
    child_uid: u32,
    child_gid: u32,
    api_dir: &Path,
) -> Result<Locked, LockError> {
    let Checked { config, nft } = checked;
    let mut locked = Locked {
        mode: config.mode,
        api_listener: None,
        api_socket: None,
        connect_allow: None,
    };
    match config.mode {
        EgressMode::Open => {}
        EgressMode::ApiOnly => {
            let (listener, path) =
                apisock::bind_api_socket(api_dir, child_gid).map_err(LockError::Socket)?;
            locked.api_listener = Some(listener);
            locked.api_socket = Some(path);
        }
        EgressMode::Allowlist => {
            let rules = Ruleset::new(child_uid, &[bound]).map_err(LockError::Nft)?;
            let nft = match nft {
                Some(n) => n,
                None => Nft::locate().map_err(LockError::Nft)?,
            };
            nft::require_net_admin().map_err(LockError::Nft)?;
            nft.install(&rules).map_err(LockError::Nft)?;
            locked.connect_allow = Some(config.allow);
        }
    }
    Ok(locked)
}

/// The start-up log line for the mode, once the child runs (a failed start prints only its
/// one error line). `proxy`: the address the child dials.
pub fn announce(locked: &Locked, proxy: SocketAddr, child_uid: u32) {
    match locked.mode {
        EgressMode::Open => log::info!(
            "BOTTLE_EGRESS=open: egress is not restricted; the child can reach any host \
             (set BOTTLE_EGRESS=api-only or allowlist to lock it down)"
        ),
        EgressMode::ApiOnly => log::info!(
            "BOTTLE_EGRESS=api-only: the child has no IP network (seccomp); the API is served on {}",
            locked
                .api_socket
                .as_deref()
                .map_or_else(|| "?".into(), |p| p.display().to_string())
        ),
        EgressMode::Allowlist => log::info!(
            "BOTTLE_EGRESS=allowlist: nftables rules installed and verified: uid {child_uid} may \
             reach only the proxy at {proxy}; CONNECT allowed to [{}]",
            locked.connect_allow.clone().unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn messages_name_the_cause_and_the_fix() {
        let e = LockError::Seccomp {
            mode: EgressMode::ApiOnly,
            why: Unsupported::Kernel(crate::sys::Errno(libc::ENOSYS)),
        };
        let m = e.to_string();
        assert!(
            m.contains("BOTTLE_EGRESS=api-only") && m.contains("qemu-user"),
            "{m}"
        );
        assert!(!m.contains("Docker's seccomp profile"), "{m}");
        let m = LockError::HostNetwork.to_string();
        assert!(m.contains("--network host") && m.contains("BOTTLE_INSECURE_HOST_NETWORK=1"));
    }

    #[test]
    fn open_locks_nothing() {
        let checked = check(EgressConfig {
            mode: EgressMode::Open,
            allow: AllowList::default(),
            host_network_ok: false,
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let l = lock(
            checked,
            "127.0.0.1:1".parse().unwrap(),
            1000,
            1000,
            &dir.path().join("api"),
        )
        .unwrap();
        assert!(l.api_listener.is_none() && l.api_socket.is_none());
        assert!(l.connect_allow.is_none());
        assert!(!dir.path().join("api").exists());
    }
}
