//! `api-only`: the Unix socket on which the proxy serves the API to the child.
//!
//! The socket lives in a directory the child cannot replace: created by root, mode 0755, in a
//! parent the child cannot write to (or that is sticky). The socket file itself is
//! `root:<child gid>` mode 0660, and the proxy still checks every peer's uid with
//! `SO_PEERCRED` ([`check_peer`]), which the kernel fills in at `connect` time and the peer
//! cannot forge.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Default directory for the socket.
pub const SOCKET_DIR: &str = "/run/bottle-init";
/// The socket's file name inside [`SOCKET_DIR`].
pub const SOCKET_NAME: &str = "api.sock";

/// Why the API socket could not be set up or a peer was refused.
#[derive(Debug)]
pub enum SockError {
    CreateDir {
        dir: PathBuf,
        source: io::Error,
    },
    Inspect {
        path: PathBuf,
        source: io::Error,
    },
    /// The directory (or its parent) could be replaced or written by someone other than root.
    Unsafe {
        path: PathBuf,
        why: String,
    },
    RemoveStale {
        path: PathBuf,
        source: io::Error,
    },
    Bind {
        path: PathBuf,
        source: io::Error,
    },
    Permissions {
        path: PathBuf,
        source: io::Error,
    },
    PeerCred {
        source: io::Error,
    },
    /// A connection from a uid that is not the child's.
    WrongPeer {
        uid: u32,
        expected: u32,
    },
}

impl fmt::Display for SockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pre = "BOTTLE_EGRESS=api-only";
        match self {
            SockError::CreateDir { dir, source } => {
                write!(f, "{pre}: cannot create {}: {source}", dir.display())
            }
            SockError::Inspect { path, source } => {
                write!(f, "{pre}: cannot inspect {}: {source}", path.display())
            }
            SockError::Unsafe { path, why } => write!(
                f,
                "{pre}: refusing to put the API socket under {}: {why}",
                path.display()
            ),
            SockError::RemoveStale { path, source } => {
                write!(f, "{pre}: cannot remove stale {}: {source}", path.display())
            }
            SockError::Bind { path, source } => {
                write!(f, "{pre}: cannot listen on {}: {source}", path.display())
            }
            SockError::Permissions { path, source } => {
                write!(
                    f,
                    "{pre}: cannot set owner/mode of {}: {source}",
                    path.display()
                )
            }
            SockError::PeerCred { source } => {
                write!(f, "cannot read the API socket peer's credentials: {source}")
            }
            SockError::WrongPeer { uid, expected } => write!(
                f,
                "API socket connection from uid {uid} refused (only uid {expected} may connect)"
            ),
        }
    }
}

impl std::error::Error for SockError {}

fn inspect(path: &Path) -> Result<std::fs::Metadata, SockError> {
    std::fs::symlink_metadata(path).map_err(|source| SockError::Inspect {
        path: path.into(),
        source,
    })
}

/// A directory root owns that no one else may write, or a sticky one (like /tmp).
fn check_dir(path: &Path, allow_sticky: bool) -> Result<(), SockError> {
    let m = inspect(path)?;
    let unsafe_dir = |why: &str| {
        Err(SockError::Unsafe {
            path: path.into(),
            why: why.into(),
        })
    };
    if !m.file_type().is_dir() {
        return unsafe_dir("not a directory (a symlink?)");
    }
    if m.uid() != 0 {
        return unsafe_dir("not owned by root");
    }
    let mode = m.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(allow_sticky && sticky) {
        return unsafe_dir("writable by group or others");
    }
    Ok(())
}

/// Create `dir` (root, 0755) if needed, check it and its parent, and listen on
/// `dir/api.sock` as `root:child_gid` mode 0660. Returns the listener and the socket path.
/// Call as root, before the child exists; the listener is blocking (make it non-blocking for
/// an event loop).
pub fn bind_api_socket(dir: &Path, child_gid: u32) -> Result<(UnixListener, PathBuf), SockError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        check_dir(parent, true)?;
    }
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(SockError::CreateDir {
                dir: dir.into(),
                source,
            });
        }
    }
    check_dir(dir, false)?;
    let path = dir.join(SOCKET_NAME);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => std::fs::remove_file(&path).map_err(|source| SockError::RemoveStale {
            path: path.clone(),
            source,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(SockError::Inspect { path, source }),
    }
    let listener = UnixListener::bind(&path).map_err(|source| SockError::Bind {
        path: path.clone(),
        source,
    })?;
    let perm = |source| SockError::Permissions {
        path: path.clone(),
        source,
    };
    std::os::unix::fs::chown(&path, Some(0), Some(child_gid)).map_err(perm)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(perm)?;
    Ok((listener, path))
}

/// The uid of the process that connected (`SO_PEERCRED`).
pub fn peer_uid(stream: &impl AsFd) -> Result<u32, SockError> {
    crate::sys::peer_uid(stream.as_fd().as_raw_fd())
        .map_err(|e| SockError::PeerCred { source: e.into() })
}

/// Accept only the child's uid. The proxy calls this on every accepted connection and closes
/// it (logging the error) otherwise.
pub fn check_peer(stream: &impl AsFd, child_uid: u32) -> Result<(), SockError> {
    let uid = peer_uid(stream)?;
    if uid == child_uid {
        Ok(())
    } else {
        Err(SockError::WrongPeer {
            uid,
            expected: child_uid,
        })
    }
}
