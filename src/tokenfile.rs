//! `BOTTLE_TOKEN_FILE`: read the OAuth token from a file (Docker and Kubernetes secrets).
//! Read while still root and after `PR_SET_DUMPABLE=0`; symlinks are followed on purpose
//! (Kubernetes secret volumes are symlinks into a `..data` directory).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::secret::Secret;
use crate::user::ChildUser;

/// Larger than any real token; a bigger file is a mistake (wrong path).
const MAX_LEN: u64 = 64 * 1024;

#[derive(Debug)]
pub enum TokenFileError {
    Open(std::io::Error),
    Read(std::io::Error),
    TooLarge,
    Empty,
}

impl TokenFileError {
    pub fn message(&self, path: &Path) -> String {
        let p = path.display();
        match self {
            TokenFileError::Open(e) => format!(
                "cannot open BOTTLE_TOKEN_FILE {p}: {e}; mount the secret there or fix the path"
            ),
            TokenFileError::Read(e) => {
                format!("cannot read BOTTLE_TOKEN_FILE {p}: {e}; check the file")
            }
            TokenFileError::TooLarge => format!(
                "BOTTLE_TOKEN_FILE {p} is larger than 64 KiB; point it at the file holding only the token"
            ),
            TokenFileError::Empty => format!(
                "BOTTLE_TOKEN_FILE {p} is empty; put the OAuth token from `claude setup-token` in it"
            ),
        }
    }
}

/// Reads and trims the token. The buffer is allocated once at full size so no reallocation
/// leaves a stray copy in freed memory.
pub fn read(path: &Path) -> Result<Secret, TokenFileError> {
    let f = File::open(path).map_err(TokenFileError::Open)?;
    let mut buf = Vec::with_capacity(MAX_LEN as usize + 1);
    let res = f.take(MAX_LEN + 1).read_to_end(&mut buf);
    let secret = crate::config::trim(Secret::new(buf));
    res.map_err(TokenFileError::Read)?;
    if secret.len() as u64 > MAX_LEN {
        return Err(TokenFileError::TooLarge);
    }
    if secret.is_empty() {
        return Err(TokenFileError::Empty);
    }
    Ok(secret)
}

/// True when the file's permission bits let `user` read it (the point of the proxy is that
/// the child cannot read the token; a world-readable secret file undoes that).
pub fn readable_by(path: &Path, user: &ChildUser) -> bool {
    let Ok(md) = std::fs::metadata(path) else {
        return false;
    };
    let mode = md.mode();
    (md.uid() == user.uid && mode & 0o400 != 0)
        || (user.groups.contains(&md.gid()) && mode & 0o040 != 0)
        || mode & 0o004 != 0
}
