//! What PID 1 publishes for `bottle-init exec`: its pid and start time (to detect pid reuse),
//! the proxy's base URL, the session secret, the credential kind and the child user.
//!
//! Stored as `key=value` lines in `$BOTTLE_RUN_DIR/state` (default `/run/bottle-init/state`):
//! the directory is root-owned 0700, the file root-owned 0600, written to a fresh temporary
//! file (O_EXCL|O_NOFOLLOW) and renamed into place, so a reader never sees half a file and a
//! planted symlink is never followed. The reader refuses a file that is not root-owned 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::secret::{CredentialKind, Secret};
use crate::user::ChildUser;

pub use crate::config::DEFAULT_RUN_DIR;
pub const STATE_FILE: &str = "state";

/// The run directory (`BOTTLE_RUN_DIR`, see `config::Common`) made absolute: PID 1 leaves
/// its start directory once the child runs, and removes its files from there at exit.
pub fn run_dir(configured: &Path) -> PathBuf {
    std::path::absolute(configured).unwrap_or_else(|_| configured.to_path_buf())
}

#[derive(Debug)]
pub struct RunInfo {
    pub pid: i32,
    pub starttime: u64,
    pub comm: String,
    pub base_url: String,
    pub kind: CredentialKind,
    pub user: ChildUser,
    pub session: Secret,
}

fn kind_str(k: CredentialKind) -> &'static str {
    match k {
        CredentialKind::OAuth => "oauth",
        CredentialKind::ApiKey => "apikey",
    }
}

impl RunInfo {
    /// Serialises; the returned buffer holds the session secret, so the caller wipes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let u = &self.user;
        let groups: Vec<String> = u.groups.iter().map(|g| g.to_string()).collect();
        let mut s = format!(
            "pid={}\nstarttime={}\ncomm={}\nbase_url={}\nkind={}\nuid={}\ngid={}\ngroups={}\n",
            self.pid,
            self.starttime,
            self.comm,
            self.base_url,
            kind_str(self.kind),
            u.uid,
            u.gid,
            groups.join(",")
        )
        .into_bytes();
        for (k, v) in [("name", &u.name), ("home", &u.home), ("shell", &u.shell)] {
            if let Some(v) = v {
                s.extend_from_slice(format!("{k}={v}\n").as_bytes());
            }
        }
        s.extend_from_slice(b"session=");
        s.extend_from_slice(self.session.expose());
        s.push(b'\n');
        s
    }

    /// Parses [`RunInfo::to_bytes`] output. The error never contains the session secret.
    pub fn parse(text: &[u8]) -> Result<RunInfo, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        let need = |k: &str| get(k).ok_or_else(|| format!("missing {k}"));
        let num = |k: &str| need(k)?.parse::<u64>().map_err(|_| format!("bad {k}"));
        let kind = match need("kind")? {
            "oauth" => CredentialKind::OAuth,
            "apikey" => CredentialKind::ApiKey,
            _ => return Err("bad kind".into()),
        };
        let groups = need("groups")?
            .split(',')
            .filter(|g| !g.is_empty())
            .map(|g| g.parse::<u32>().map_err(|_| "bad groups".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let session = need("session")?;
        if session.is_empty() {
            return Err("empty session".into());
        }
        Ok(RunInfo {
            pid: i32::try_from(num("pid")?).map_err(|_| "bad pid")?,
            starttime: num("starttime")?,
            comm: need("comm")?.to_string(),
            base_url: need("base_url")?.to_string(),
            kind,
            user: ChildUser {
                uid: u32::try_from(num("uid")?).map_err(|_| "bad uid")?,
                gid: u32::try_from(num("gid")?).map_err(|_| "bad gid")?,
                groups,
                name: get("name").map(str::to_string),
                home: get("home").map(str::to_string),
                shell: get("shell").map(str::to_string),
            },
            session: Secret::new(session.as_bytes().to_vec()),
        })
    }
}

/// `(comm, starttime)` of a process from `/proc/PID/stat` (readable by everyone, even for a
/// non-dumpable process, unlike `/proc/PID/exe`).
pub fn proc_identity(pid: i32) -> Option<(String, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_identity(&stat)
}

pub fn parse_identity(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // Fields after the comm start at field 3 (state); starttime is field 22.
    let starttime = stat[close + 1..].split_whitespace().nth(19)?.parse().ok()?;
    Some((comm, starttime))
}

/// Writes the state file. Creates the directory (0700) when missing; refuses a directory
/// that is a symlink, not root-owned or open to others.
pub fn publish(dir: &Path, info: &RunInfo) -> std::io::Result<PathBuf> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir)?;
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let md = fs::symlink_metadata(dir)?;
    if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} must be a root-owned directory not writable by others",
            dir.display()
        )));
    }
    if md.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    let mut bytes = info.to_bytes();
    let res = write_private(dir, STATE_FILE, &bytes);
    crate::secret::wipe(&mut bytes);
    res
}

/// Writes `dir/name` as a root-owned 0600 file: into a fresh temporary file (O_EXCL,
/// O_NOFOLLOW, so a planted file or symlink is never written through), then renamed into
/// place so a reader never sees half a file. No fsync: the file only matters while PID 1
/// lives (/run is a tmpfs in containers; on a disk-backed /run an fsync cost ~1 ms of
/// start-up).
pub fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(bytes)?;
    let target = dir.join(name);
    fs::rename(&tmp, &target)?;
    Ok(target)
}

/// Reads `dir/name`, which must be a regular root-owned file closed to group and others (not
/// followed if it is a symlink). The caller wipes the bytes when they hold a secret.
pub fn read_private(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let md = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if md.uid() != 0 || md.mode() & 0o077 != 0 || !md.is_file() {
        return Err(format!("{} is not a root-owned 0600 file", path.display()));
    }
    let mut buf = Vec::with_capacity(4096);
    if let Err(e) = f.read_to_end(&mut buf) {
        crate::secret::wipe(&mut buf);
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(buf)
}

/// Reads and checks the state file.
pub fn read(dir: &Path) -> Result<RunInfo, String> {
    let mut buf = read_private(dir, STATE_FILE)?;
    let parsed =
        RunInfo::parse(&buf).map_err(|m| format!("{}: {m}", dir.join(STATE_FILE).display()));
    crate::secret::wipe(&mut buf);
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            pid: 1,
            starttime: 12345,
            comm: "bottle-init".into(),
            base_url: "http://127.0.0.1:4000".into(),
            kind: CredentialKind::ApiKey,
            user: ChildUser {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 27],
                name: Some("node".into()),
                home: Some("/home/node".into()),
                shell: None,
            },
            session: Secret::new(b"bottle-00ff".to_vec()),
        }
    }

    #[test]
    fn round_trip() {
        let i = info();
        let back = RunInfo::parse(&i.to_bytes()).unwrap();
        assert_eq!(back.pid, 1);
        assert_eq!(back.starttime, 12345);
        assert_eq!(back.comm, "bottle-init");
        assert_eq!(back.base_url, i.base_url);
        assert_eq!(back.kind, CredentialKind::ApiKey);
        assert_eq!(back.user, i.user);
        assert_eq!(back.session.expose(), b"bottle-00ff");
    }

    #[test]
    fn parse_errors_never_show_the_session() {
        let text = b"pid=x\nsession=bottle-SECRET\n";
        let e = RunInfo::parse(text).unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn identity_from_stat() {
        let stat = "1 (bottle-init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 2 0 777 100 1";
        assert_eq!(parse_identity(stat), Some(("bottle-init".into(), 777)));
    }

    #[test]
    fn publish_then_read_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let path = publish(&dir, &info()).unwrap();
        let md = fs::metadata(&path).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(read(&dir).unwrap().session.expose(), b"bottle-00ff");
        // A group/other-readable file is refused.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(&dir).unwrap_err().contains("0600"));
    }
}
