//! `BOTTLE_TOKEN_FILE` / `BOTTLE_API_KEY_FILE`: the credential read from a file (Docker and
//! Kubernetes secrets). Read while still root and after `PR_SET_DUMPABLE=0`; symlinks are
//! followed on purpose (Kubernetes secret volumes are symlinks into a `..data` directory).
//!
//! Fails closed: a file the child user could read, or could make readable, defeats the whole
//! point of keeping the credential out of its reach. The checks run on the OPENED file (fstat
//! and fgetxattr on the descriptor, so there is no check-then-open race), and refuse when
//! - the child's uid owns it (it could `chmod` it), or
//! - others have the read bit (any uid can read it), or
//! - its group has the read bit and the child is in that group, or
//! - a POSIX ACL entry for the child's uid, or for one of its groups, grants read (after the
//!   ACL mask), or the ACL's "other" entry does,
//!
//! unless the operator opts in with `BOTTLE_INSECURE_SECRET_FILE=1` (then it is a warning).
//! The rules are a superset of what the kernel would let the child read: fail closed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::secret::Secret;
use crate::user::ChildUser;

/// Larger than any real token; a bigger file is a mistake (wrong path).
const MAX_LEN: u64 = 64 * 1024;

/// The extended attribute holding a file's access ACL.
const ACL_XATTR: &std::ffi::CStr = c"system.posix_acl_access";

/// One entry of a POSIX access ACL (`posix_acl_xattr_entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// The owner's entry: the owner check covers it; the tests build ACLs with it.
#[cfg(test)]
pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;
const ACL_READ: u16 = 0x04;
const ACL_XATTR_VERSION: u32 = 2;

/// Parses the little-endian `system.posix_acl_access` value: a u32 version (2), then
/// (u16 tag, u16 perm, u32 id) entries. `None` when it is not that format.
pub fn parse_acl(bytes: &[u8]) -> Option<Vec<AclEntry>> {
    let (version, rest) = bytes.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != ACL_XATTR_VERSION || rest.len() % 8 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(8)
            .map(|e| AclEntry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect(),
    )
}

/// What lets the child user read the file, for the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// The child's uid owns it: it can chmod it.
    Owner,
    /// Mode bits: others may read.
    OtherRead,
    /// Mode bits: the file's group may read and the child is in it.
    GroupRead { gid: u32 },
    /// An ACL entry grants read to the child's uid, one of its groups, or everyone.
    Acl(String),
}

impl Exposure {
    fn describe(&self, uid: u32, mode: u32) -> String {
        match self {
            Exposure::Owner => {
                format!("is owned by the child user (uid {uid}), which could chmod it and read it")
            }
            Exposure::OtherRead => {
                format!(
                    "is readable by everyone (mode {:04o}), the child user too",
                    mode & 0o7777
                )
            }
            Exposure::GroupRead { gid } => format!(
                "is readable by its group {gid} (mode {:04o}), which the child user (uid {uid}) is in",
                mode & 0o7777
            ),
            Exposure::Acl(what) => {
                format!("has a POSIX ACL that grants read to {what} (uid {uid} is the child user)")
            }
        }
    }
}

/// The file's owner, group and mode, and its access ACL if it has one.
#[derive(Clone, Debug)]
pub struct FileFacts {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub acl: Option<Vec<AclEntry>>,
}

/// Pure decision: can `user` read the file, or make it readable? First reason found.
pub fn exposure(f: &FileFacts, user: &ChildUser) -> Option<Exposure> {
    let in_group = |g: u32| g == user.gid || user.groups.contains(&g);
    if f.uid == user.uid {
        return Some(Exposure::Owner);
    }
    if f.mode & 0o004 != 0 {
        return Some(Exposure::OtherRead);
    }
    let Some(acl) = &f.acl else {
        if f.mode & 0o040 != 0 && in_group(f.gid) {
            return Some(Exposure::GroupRead { gid: f.gid });
        }
        return None;
    };
    // With an ACL, named entries and the owning group are limited by the mask (acl(5)).
    let mask = acl
        .iter()
        .find(|e| e.tag == ACL_MASK)
        .map_or(0xffff, |e| e.perm);
    let reads =
        |e: &AclEntry, masked: bool| e.perm & ACL_READ != 0 && (!masked || mask & ACL_READ != 0);
    for e in acl {
        let found = match e.tag {
            ACL_USER if e.id == user.uid && reads(e, true) => Some(format!("user {}", e.id)),
            ACL_GROUP_OBJ if in_group(f.gid) && reads(e, true) => {
                Some(format!("its group {}", f.gid))
            }
            ACL_GROUP if in_group(e.id) && reads(e, true) => Some(format!("group {}", e.id)),
            ACL_OTHER if reads(e, false) => Some("everyone (other)".to_string()),
            _ => None,
        };
        if let Some(what) = found {
            return Some(Exposure::Acl(what));
        }
    }
    None
}

#[derive(Debug)]
pub enum SecretFileError {
    Open(std::io::Error),
    Stat(std::io::Error),
    NotRegular,
    Acl(crate::sys::Errno),
    BadAcl,
    Exposed {
        exposure: Exposure,
        uid: u32,
        mode: u32,
    },
    Read(std::io::Error),
    TooLarge,
    Empty,
}

impl SecretFileError {
    /// `<what is wrong>; <how to fix it>`, naming the variable and the file.
    pub fn message(&self, var: &str, path: &Path) -> String {
        let p = path.display();
        match self {
            SecretFileError::Open(e) => {
                format!("cannot open {var} {p}: {e}; mount the secret there or fix the path")
            }
            SecretFileError::Stat(e) => format!("cannot stat {var} {p}: {e}; check the file"),
            SecretFileError::NotRegular => {
                format!("{var} {p} is not a regular file; point it at the file holding the secret")
            }
            SecretFileError::Acl(e) => format!(
                "cannot read the ACL of {var} {p}: {e}; check the file system, or remove the ACL"
            ),
            SecretFileError::BadAcl => format!(
                "{var} {p} has an ACL bottle-init cannot interpret; remove it (setfacl -b {p})"
            ),
            SecretFileError::Exposed {
                exposure,
                uid,
                mode,
            } => format!(
                "{var} {p} {}, so the command could read the real credential; make it root-only \
                 (chown root:root {p}; chmod 0400 {p}; setfacl -b {p}; in Kubernetes, defaultMode: \
                 0400 on the secret volume), or set BOTTLE_INSECURE_SECRET_FILE=1 to accept that",
                exposure.describe(*uid, *mode)
            ),
            SecretFileError::Read(e) => format!("cannot read {var} {p}: {e}; check the file"),
            SecretFileError::TooLarge => format!(
                "{var} {p} is larger than 64 KiB; point it at the file holding only the secret"
            ),
            SecretFileError::Empty => format!("{var} {p} is empty; put the credential in it"),
        }
    }
}

/// Opens the file, checks it against `user` on the opened descriptor, and reads and trims the
/// secret. With `insecure` an exposed file is read anyway and the exposure returned (main
/// warns). The buffer is allocated once at full size so no reallocation leaves a stray copy
/// in freed memory.
pub fn read(
    path: &Path,
    user: &ChildUser,
    insecure: bool,
) -> Result<(Secret, Option<Exposure>), SecretFileError> {
    // O_NONBLOCK: a FIFO planted at the path must not hang start-up (it is refused below as
    // not a regular file); it has no effect on a regular file.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(SecretFileError::Open)?;
    let md = f.metadata().map_err(SecretFileError::Stat)?;
    if !md.is_file() {
        return Err(SecretFileError::NotRegular);
    }
    let acl = match crate::sys::fgetxattr(f.as_raw_fd(), ACL_XATTR).map_err(SecretFileError::Acl)? {
        None => None,
        Some(bytes) => Some(parse_acl(&bytes).ok_or(SecretFileError::BadAcl)?),
    };
    let facts = FileFacts {
        uid: md.uid(),
        gid: md.gid(),
        mode: md.mode(),
        acl,
    };
    let exposed = exposure(&facts, user);
    if let Some(exposure) = &exposed
        && !insecure
    {
        return Err(SecretFileError::Exposed {
            exposure: exposure.clone(),
            uid: user.uid,
            mode: facts.mode,
        });
    }
    Ok((read_secret(f)?, exposed))
}

/// The warning logged when `BOTTLE_INSECURE_SECRET_FILE=1` let an exposed file through.
pub fn insecure_warning(var: &str, path: &Path, e: &Exposure, uid: u32) -> String {
    format!(
        "{var} {} {} (accepted because BOTTLE_INSECURE_SECRET_FILE=1)",
        path.display(),
        match e {
            Exposure::Owner => format!("is owned by the child user (uid {uid})"),
            Exposure::OtherRead => "is readable by everyone".to_string(),
            Exposure::GroupRead { gid } => format!("is readable by group {gid}"),
            Exposure::Acl(what) => format!("has an ACL granting read to {what}"),
        }
    )
}

fn read_secret(f: File) -> Result<Secret, SecretFileError> {
    let mut buf = Vec::with_capacity(MAX_LEN as usize + 1);
    let res = f.take(MAX_LEN + 1).read_to_end(&mut buf);
    let secret = crate::secret::trim(Secret::new(buf));
    res.map_err(SecretFileError::Read)?;
    if secret.len() as u64 > MAX_LEN {
        return Err(SecretFileError::TooLarge);
    }
    if secret.is_empty() {
        return Err(SecretFileError::Empty);
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> ChildUser {
        ChildUser {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 27],
            name: None,
            home: None,
            shell: None,
        }
    }

    fn facts(uid: u32, gid: u32, mode: u32, acl: Option<Vec<AclEntry>>) -> FileFacts {
        FileFacts {
            uid,
            gid,
            mode: 0o100000 | mode,
            acl,
        }
    }

    fn e(tag: u16, perm: u16, id: u32) -> AclEntry {
        AclEntry { tag, perm, id }
    }

    /// Serialises entries the way the kernel stores them.
    fn acl_bytes(entries: &[AclEntry]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for x in entries {
            v.extend_from_slice(&x.tag.to_le_bytes());
            v.extend_from_slice(&x.perm.to_le_bytes());
            v.extend_from_slice(&x.id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acl_parses_byte_by_byte() {
        let bytes = [
            2, 0, 0, 0, // version
            1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, // user::rw-
            2, 0, 4, 0, 0xe8, 0x03, 0, 0, // user:1000:r--
            4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // group::---
            0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, // mask::r--
            0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // other::---
        ];
        let acl = parse_acl(&bytes).unwrap();
        assert_eq!(acl.len(), 5);
        assert_eq!(acl[1], e(ACL_USER, 4, 1000));
        assert_eq!(acl[3], e(ACL_MASK, 4, u32::MAX));
        assert_eq!(parse_acl(&bytes[..bytes.len() - 1]), None);
        assert_eq!(parse_acl(&[1, 0, 0, 0]), None);
        assert_eq!(parse_acl(&[2, 0]), None);
        assert_eq!(parse_acl(&acl_bytes(&acl)), Some(acl));
    }

    #[test]
    fn root_only_files_pass() {
        for mode in [0o400, 0o600, 0o640, 0o440] {
            assert_eq!(
                exposure(&facts(0, 0, mode, None), &user()),
                None,
                "{mode:o}"
            );
        }
        // Group read for a group the child is not in.
        assert_eq!(exposure(&facts(0, 5, 0o640, None), &user()), None);
        // An ACL that names other users only, or is masked off.
        let acl = vec![
            e(ACL_USER_OBJ, 6, u32::MAX),
            e(ACL_USER, 4, 1001),
            e(ACL_USER, 4, 1000),
            e(ACL_GROUP_OBJ, 0, u32::MAX),
            e(ACL_MASK, 0, u32::MAX),
            e(ACL_OTHER, 0, u32::MAX),
        ];
        assert_eq!(exposure(&facts(0, 0, 0o600, Some(acl)), &user()), None);
    }

    #[test]
    fn child_readable_or_owned_files_are_exposed() {
        let u = user();
        assert_eq!(
            exposure(&facts(1000, 0, 0o400, None), &u),
            Some(Exposure::Owner)
        );
        // Even 0000: the owner can chmod it.
        assert_eq!(
            exposure(&facts(1000, 1000, 0o000, None), &u),
            Some(Exposure::Owner)
        );
        assert_eq!(
            exposure(&facts(0, 0, 0o644, None), &u),
            Some(Exposure::OtherRead)
        );
        assert_eq!(
            exposure(&facts(0, 0, 0o444, None), &u),
            Some(Exposure::OtherRead)
        );
        assert_eq!(
            exposure(&facts(0, 1000, 0o640, None), &u),
            Some(Exposure::GroupRead { gid: 1000 })
        );
        // A supplementary group counts.
        assert_eq!(
            exposure(&facts(0, 27, 0o440, None), &u),
            Some(Exposure::GroupRead { gid: 27 })
        );
        let base = |extra: AclEntry, mask: u16| {
            vec![
                e(ACL_USER_OBJ, 6, u32::MAX),
                extra,
                e(ACL_GROUP_OBJ, 0, u32::MAX),
                e(ACL_MASK, mask, u32::MAX),
                e(ACL_OTHER, 0, u32::MAX),
            ]
        };
        for (extra, what) in [
            (e(ACL_USER, 4, 1000), "user 1000"),
            (e(ACL_GROUP, 4, 27), "group 27"),
            (e(ACL_GROUP, 6, 1000), "group 1000"),
        ] {
            assert_eq!(
                exposure(&facts(0, 0, 0o640, Some(base(extra, 4))), &u),
                Some(Exposure::Acl(what.to_string())),
                "{what}"
            );
        }
        // The owning group's entry, when the child is in that group.
        let acl = vec![
            e(ACL_USER_OBJ, 6, u32::MAX),
            e(ACL_USER, 4, 1001),
            e(ACL_GROUP_OBJ, 4, u32::MAX),
            e(ACL_MASK, 4, u32::MAX),
            e(ACL_OTHER, 0, u32::MAX),
        ];
        assert_eq!(
            exposure(&facts(0, 1000, 0o640, Some(acl)), &u),
            Some(Exposure::Acl("its group 1000".into()))
        );
    }

    #[test]
    fn messages_name_the_variable_file_and_fix() {
        let err = SecretFileError::Exposed {
            exposure: Exposure::OtherRead,
            uid: 1000,
            mode: 0o100644,
        };
        let m = err.message("BOTTLE_API_KEY_FILE", Path::new("/run/secrets/k"));
        for needle in [
            "BOTTLE_API_KEY_FILE /run/secrets/k",
            "0644",
            "chown root:root /run/secrets/k",
            "chmod 0400 /run/secrets/k",
            "defaultMode: 0400",
            "BOTTLE_INSECURE_SECRET_FILE=1",
        ] {
            assert!(m.contains(needle), "{needle}: {m}");
        }
        assert!(!m.contains('\n'));
    }
}
