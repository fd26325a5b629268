//! A home for a child user without a passwd entry, e.g. `BOTTLE_USER=$(id -u):$(id -g)` so
//! that claude can write a workspace owned by the host's uid. Without one the child keeps the
//! container's `HOME=/root`, which it cannot write: interactive claude then shows a blank
//! screen forever.
//!
//! Such a uid gets `/home/uid-<UID>`, made by bottle-init as root before the child starts:
//! owned by the uid and its gid, mode 0700. Because another uid could have planted that path,
//! the steps trust nothing they did not check:
//! - the parent (`/home`) must be a root-owned directory that no group or other user can write,
//!   so nobody but root can create, rename or swap entries in it (created 0755 if missing);
//! - the home is opened with `O_NOFOLLOW | O_DIRECTORY`: a symlink or a file is refused,
//!   never followed;
//! - an existing home owned by the uid is used as it is (a volume from an earlier run); one
//!   that root just created, or an empty root-owned one (Docker's mount point of a fresh
//!   volume), is handed to the uid with `fchown`/`fchmod` on the opened descriptor; anything
//!   else (another uid's, or root's with contents) is refused with the fix named.

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::user::ChildUser;

/// Where private homes are made.
pub const HOMES: &str = "/home";

/// The home of a uid that has no passwd entry, under `parent`.
pub fn private_home(parent: &Path, uid: u32) -> PathBuf {
    parent.join(format!("uid-{uid}"))
}

#[derive(Debug)]
pub enum HomeError {
    /// The parent is not a directory only root can change.
    UnsafeParent {
        parent: PathBuf,
        owner: u32,
        mode: u32,
        uid: u32,
    },
    /// The home path is a symlink or not a directory.
    NotADirectory { path: PathBuf, uid: u32 },
    /// The home exists and belongs to someone else (or to root, with contents).
    Owner {
        path: PathBuf,
        owner: u32,
        uid: u32,
        gid: u32,
    },
    Io {
        path: PathBuf,
        uid: u32,
        err: io::Error,
    },
}

impl fmt::Display for HomeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HomeError::UnsafeParent {
                parent,
                owner,
                mode,
                uid,
            } => write!(
                f,
                "{} (owner uid {owner}, mode {:04o}) can be changed by users other than root, so the home of uid {uid} (which has no passwd entry) could be planted there; make it root-owned and not group- or world-writable (chown root:root {0}; chmod 0755 {0}) or give uid {uid} a passwd entry",
                parent.display(),
                mode & 0o7777
            ),
            HomeError::NotADirectory { path, uid } => write!(
                f,
                "{} (the home of uid {uid}, which has no passwd entry) is a symlink or not a directory and is never followed; remove it, or give uid {uid} a passwd entry with its own home",
                path.display()
            ),
            HomeError::Owner {
                path,
                owner,
                uid,
                gid,
            } => write!(
                f,
                "{} (the home of uid {uid}, which has no passwd entry) belongs to uid {owner}{}; remove it, or chown {uid}:{gid} it if it is really that user's",
                path.display(),
                if *owner == 0 { " and is not empty" } else { "" }
            ),
            HomeError::Io { path, uid, err } => write!(
                f,
                "cannot make {} the home of uid {uid} (which has no passwd entry): {err}; mount a writable volume on {HOMES} (e.g. -v claude-home:{HOMES} or --tmpfs {HOMES}) or give uid {uid} a passwd entry",
                path.display()
            ),
        }
    }
}

/// What to do with the home directory found at the path.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The uid's own: use it unchanged.
    Use,
    /// Root's and empty (just made by us, or a fresh volume's mount point): give it to the uid.
    TakeOver,
    Refuse,
}

/// Pure policy for an existing directory (opened without following a symlink).
pub fn verdict(owner: u32, empty: bool, uid: u32) -> Verdict {
    match owner {
        o if o == uid => Verdict::Use,
        0 if empty => Verdict::TakeOver,
        _ => Verdict::Refuse,
    }
}

/// Gives `user` a private home under [`HOMES`] when it has no passwd entry (`home` unset).
/// Runs as root before the child starts; the child then finds `HOME` writable.
pub fn ensure(user: &mut ChildUser) -> Result<(), HomeError> {
    if user.home.is_some() {
        return Ok(());
    }
    let path = prepare(Path::new(HOMES), user.uid, user.gid)?;
    user.home = Some(path.to_string_lossy().into_owned());
    Ok(())
}

/// Makes or checks `parent/uid-UID` for `uid:gid` (see the module doc). Returns its path.
pub fn prepare(parent: &Path, uid: u32, gid: u32) -> Result<PathBuf, HomeError> {
    let io_err = |path: &Path, err| HomeError::Io {
        path: path.to_path_buf(),
        uid,
        err,
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(parent)
            .map_err(|e| io_err(parent, e))?;
    }
    let meta = std::fs::metadata(parent).map_err(|e| io_err(parent, e))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(HomeError::UnsafeParent {
            parent: parent.to_path_buf(),
            owner: meta.uid(),
            mode: meta.mode(),
            uid,
        });
    }
    // From here only root can change entries of `parent`, so path operations in it are safe.
    let path = private_home(parent, uid);
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => {}
        // Whatever is there (a directory, a planted symlink) is checked below, not trusted.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(&path, e)),
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => HomeError::NotADirectory {
                path: path.clone(),
                uid,
            },
            _ => io_err(&path, e),
        })?;
    let meta = dir.metadata().map_err(|e| io_err(&path, e))?;
    let empty = || {
        std::fs::read_dir(&path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    };
    match verdict(meta.uid(), meta.uid() == 0 && empty(), uid) {
        Verdict::Use => Ok(path),
        Verdict::TakeOver => {
            // On the descriptor, so it is the directory that was checked.
            std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))
                .and_then(|()| dir.set_permissions(std::fs::Permissions::from_mode(0o700)))
                .map_err(|e| io_err(&path, e))?;
            Ok(path)
        }
        Verdict::Refuse => Err(HomeError::Owner {
            path,
            owner: meta.uid(),
            uid,
            gid,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(4242, false, 4242), Verdict::Use);
        assert_eq!(verdict(4242, true, 4242), Verdict::Use);
        assert_eq!(verdict(0, true, 4242), Verdict::TakeOver);
        assert_eq!(verdict(0, false, 4242), Verdict::Refuse);
        assert_eq!(verdict(1000, true, 4242), Verdict::Refuse);
    }

    #[test]
    fn path_and_messages_name_the_fix() {
        let p = private_home(Path::new("/home"), 4242);
        assert_eq!(p, Path::new("/home/uid-4242"));
        let e = HomeError::Owner {
            path: p.clone(),
            owner: 1000,
            uid: 4242,
            gid: 4242,
        };
        let m = e.to_string();
        assert!(
            m.contains("belongs to uid 1000") && m.contains("chown 4242:4242"),
            "{m}"
        );
        let e = HomeError::UnsafeParent {
            parent: "/home".into(),
            owner: 1000,
            mode: 0o40777,
            uid: 4242,
        };
        assert!(e.to_string().contains("mode 0777"), "{e}");
        assert!(e.to_string().contains("chmod 0755 /home"), "{e}");
    }

    #[test]
    fn users_with_a_passwd_home_are_left_alone() {
        let mut u = ChildUser {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            name: Some("n".into()),
            home: Some("/nonexistent".into()),
            shell: None,
        };
        ensure(&mut u).unwrap();
        assert_eq!(u.home.as_deref(), Some("/nonexistent"));
    }
}
