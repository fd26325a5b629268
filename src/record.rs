//! The run record: what PID 1 publishes for `bottle-init exec`, which joins it. It is PID 1's
//! [`Identity`] (pid, name and start time, so a recycled pid or another program is never
//! taken for it) and the [`ChildSpec`] every command started here gets (the child user, the
//! credential kind, the session secret, the proxy and the egress mode).
//!
//! On disk, in `$BOTTLE_RUN_DIR` (default `/run/bottle-init`, root-owned 0700): `state` (the
//! identity, the child user, the proxy, the session secret) and `egress` (the mode, bound to
//! the same identity). Both are root-owned 0600, written to a fresh temporary file
//! (O_EXCL|O_NOFOLLOW) and renamed into place, so a reader never sees half a file and a
//! planted symlink is never followed; the reader refuses a file that is not root-owned 0600.
//! They are written together, read together ([`read`]: `exec` refuses when either is missing,
//! bad, or names another process, so it never runs a command unlocked in a locked container)
//! and removed together by the [`Published`] guard, only while they still name this process.
//!
//! One identity check, [`Identity::is_live`], serves `exec`, the refusal of a second init and
//! the removal.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::egress::mode::EgressMode;
use crate::recipe::ChildSpec;
use crate::secret::{CredentialKind, Secret};
use crate::user::ChildUser;

pub use crate::config::DEFAULT_RUN_DIR;
pub const STATE_FILE: &str = "state";
pub const EGRESS_FILE: &str = "egress";

/// The run directory (`BOTTLE_RUN_DIR`, see `config::Common`) made absolute: PID 1 leaves
/// its start directory once the child runs, and removes its files from there at exit.
pub fn run_dir(configured: &Path) -> PathBuf {
    std::path::absolute(configured).unwrap_or_else(|_| configured.to_path_buf())
}

/// Which process a record belongs to: `/proc/PID/stat`'s name and start time pin the pid to
/// one program run (readable by everyone, even for a non-dumpable process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    pub comm: String,
    pub starttime: u64,
}

impl Identity {
    /// The identity of `pid` now, if it runs.
    pub fn of(pid: i32) -> Option<Identity> {
        // "/proc/./PID": the kernel resolves it like /proc/PID, but qemu-user (emulated arm64
        // images) fakes its own process's /proc/PID/stat (start time 0) when the path is
        // spelled /proc/PID or /proc/self, and PID 1's record would then never match.
        let stat = fs::read_to_string(format!("/proc/./{pid}/stat")).ok()?;
        parse_identity(pid, &stat)
    }

    /// This process.
    pub fn current() -> Option<Identity> {
        Identity::of(crate::sys::getpid())
    }

    /// The recorded process still runs: the same pid with the same name and start time.
    pub fn is_live(&self) -> bool {
        Identity::of(self.pid).as_ref() == Some(self)
    }
}

/// `(comm, starttime)` from a `/proc/PID/stat` line (the comm may hold spaces and
/// parentheses; starttime is field 22).
pub fn parse_identity(pid: i32, stat: &str) -> Option<Identity> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // Fields after the comm start at field 3 (state).
    let starttime = stat[close + 1..].split_whitespace().nth(19)?.parse().ok()?;
    Some(Identity {
        pid,
        comm,
        starttime,
    })
}

/// PID 1's published record.
#[derive(Debug)]
pub struct RunRecord {
    pub identity: Identity,
    pub child: ChildSpec,
}

fn kind_str(k: CredentialKind) -> &'static str {
    match k {
        CredentialKind::OAuth => "oauth",
        CredentialKind::ApiKey => "apikey",
    }
}

/// `key=value` lines: the value of `key`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn need<'a>(text: &'a str, key: &str) -> Result<&'a str, String> {
    field(text, key).ok_or_else(|| format!("missing {key}"))
}

fn num(text: &str, key: &str) -> Result<u64, String> {
    need(text, key)?
        .parse::<u64>()
        .map_err(|_| format!("bad {key}"))
}

impl RunRecord {
    /// The `state` file; the buffer holds the session secret, so the caller wipes it.
    pub fn state_bytes(&self) -> Vec<u8> {
        let (id, c, u) = (&self.identity, &self.child, &self.child.user);
        let groups: Vec<String> = u.groups.iter().map(|g| g.to_string()).collect();
        let mut s = format!(
            "pid={}\nstarttime={}\ncomm={}\nbase_url={}\nkind={}\nuid={}\ngid={}\ngroups={}\n",
            id.pid,
            id.starttime,
            id.comm,
            c.base_url(),
            kind_str(c.kind),
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
        s.extend_from_slice(c.session.expose());
        s.push(b'\n');
        s
    }

    /// The `egress` file.
    pub fn egress_text(&self) -> String {
        let mut s = format!(
            "pid={}\nstarttime={}\nmode={}\n",
            self.identity.pid, self.identity.starttime, self.child.egress
        );
        if let Some(p) = &self.child.api_socket {
            s.push_str(&format!("socket={}\n", p.display()));
        }
        s
    }

    /// Parses the `state` file into the record, the egress mode left `open` until
    /// [`RunRecord::join_egress`]. The error never contains the session secret.
    pub fn parse_state(text: &[u8]) -> Result<RunRecord, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
        let kind = match need(text, "kind")? {
            "oauth" => CredentialKind::OAuth,
            "apikey" => CredentialKind::ApiKey,
            _ => return Err("bad kind".into()),
        };
        let groups = need(text, "groups")?
            .split(',')
            .filter(|g| !g.is_empty())
            .map(|g| g.parse::<u32>().map_err(|_| "bad groups".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let proxy: SocketAddr = need(text, "base_url")?
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .ok_or("bad base_url")?;
        let session = need(text, "session")?;
        if session.is_empty() {
            return Err("empty session".into());
        }
        let id = |k| u32::try_from(num(text, k)?).map_err(|_| format!("bad {k}"));
        Ok(RunRecord {
            identity: Identity {
                pid: i32::try_from(num(text, "pid")?).map_err(|_| "bad pid")?,
                comm: need(text, "comm")?.to_string(),
                starttime: num(text, "starttime")?,
            },
            child: ChildSpec {
                user: ChildUser {
                    uid: id("uid")?,
                    gid: id("gid")?,
                    groups,
                    name: field(text, "name").map(str::to_string),
                    home: field(text, "home").map(str::to_string),
                    shell: field(text, "shell").map(str::to_string),
                },
                kind,
                session: Secret::new(session.as_bytes().to_vec()),
                proxy,
                egress: EgressMode::Open,
                api_socket: None,
            },
        })
    }

    /// Takes the mode from the `egress` file, which must name the same process.
    pub fn join_egress(&mut self, text: &str) -> Result<(), String> {
        let id = &self.identity;
        if need(text, "pid")? != id.pid.to_string()
            || need(text, "starttime")? != id.starttime.to_string()
        {
            return Err("it belongs to another bottle-init process".into());
        }
        let mode = EgressMode::parse(Some(need(text, "mode")?)).map_err(|e| e.to_string())?;
        let socket = field(text, "socket").map(PathBuf::from);
        if mode == EgressMode::ApiOnly && socket.is_none() {
            return Err("api-only without a socket".into());
        }
        self.child.egress = mode;
        self.child.api_socket = socket;
        Ok(())
    }
}

/// Why `exec` cannot join a bottle-init.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// No usable record (missing, unsafe, malformed): the reason, never with the secret.
    Missing(String),
    /// The recorded process is gone or is something else now.
    NotRunning { pid: i32 },
}

/// Reads PID 1's record: the state, the identity check (the recorded process must still be
/// that bottle-init), then the egress record bound to it.
pub fn read(dir: &Path) -> Result<RunRecord, ReadError> {
    let mut record = read_state(dir).map_err(ReadError::Missing)?;
    if !record.identity.is_live() {
        return Err(ReadError::NotRunning {
            pid: record.identity.pid,
        });
    }
    let path = dir.join(EGRESS_FILE);
    let egress = read_private(dir, EGRESS_FILE).map_err(ReadError::Missing)?;
    let text = String::from_utf8(egress)
        .map_err(|_| ReadError::Missing(format!("{}: not UTF-8", path.display())))?;
    record
        .join_egress(&text)
        .map_err(|m| ReadError::Missing(format!("{}: {m}", path.display())))?;
    Ok(record)
}

/// The state file alone (for the second-init refusal and the removal).
fn read_state(dir: &Path) -> Result<RunRecord, String> {
    let mut buf = read_private(dir, STATE_FILE)?;
    let parsed = RunRecord::parse_state(&buf)
        .map_err(|m| format!("{}: {m}", dir.join(STATE_FILE).display()));
    crate::secret::wipe(&mut buf);
    parsed
}

/// Another live bottle-init whose record is in `dir`, if any (not this process). A missing,
/// unreadable or stale record is no obstacle.
pub fn other_live_init(dir: &Path) -> Option<i32> {
    let id = read_state(dir).ok()?.identity;
    (id.pid != crate::sys::getpid() && id.is_live()).then_some(id.pid)
}

/// Removes the record when dropped, if it still names the process that published it (never
/// another init's files).
#[derive(Debug)]
pub struct Published {
    dir: PathBuf,
    identity: Identity,
}

impl Drop for Published {
    fn drop(&mut self) {
        let ours = read_state(&self.dir).is_ok_and(|r| r.identity == self.identity);
        if ours {
            let _ = fs::remove_file(self.dir.join(STATE_FILE));
            let _ = fs::remove_file(self.dir.join(EGRESS_FILE));
        }
    }
}

/// Writes both files. Creates the directory (0700) when missing; refuses a directory that is
/// a symlink, not root-owned or open to others.
pub fn publish(dir: &Path, record: &RunRecord) -> std::io::Result<Published> {
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
    let mut bytes = record.state_bytes();
    let res = write_private(dir, STATE_FILE, &bytes);
    crate::secret::wipe(&mut bytes);
    res?;
    let published = Published {
        dir: dir.to_path_buf(),
        identity: record.identity.clone(),
    };
    // On failure the guard removes the state just written.
    write_private(dir, EGRESS_FILE, record.egress_text().as_bytes())?;
    Ok(published)
}

/// Writes `dir/name` as a root-owned 0600 file: into a fresh temporary file (O_EXCL,
/// O_NOFOLLOW, so a planted file or symlink is never written through), then renamed into
/// place so a reader never sees half a file. No fsync: the file only matters while PID 1
/// lives (/run is a tmpfs in containers; on a disk-backed /run an fsync cost ~1 ms of
/// start-up).
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
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
fn read_private(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(egress: EgressMode) -> RunRecord {
        RunRecord {
            identity: Identity {
                pid: 1,
                comm: "bottle-init".into(),
                starttime: 12345,
            },
            child: ChildSpec {
                user: ChildUser {
                    uid: 1000,
                    gid: 1000,
                    groups: vec![1000, 27],
                    name: Some("node".into()),
                    home: Some("/home/node".into()),
                    shell: None,
                },
                kind: CredentialKind::ApiKey,
                session: Secret::new(b"bottle-00ff".to_vec()),
                proxy: "127.0.0.1:4000".parse().unwrap(),
                egress,
                api_socket: (egress == EgressMode::ApiOnly)
                    .then(|| "/run/bottle-init-api/api.sock".into()),
            },
        }
    }

    #[test]
    fn round_trip() {
        for mode in [EgressMode::Open, EgressMode::ApiOnly, EgressMode::Allowlist] {
            let r = record(mode);
            let mut back = RunRecord::parse_state(&r.state_bytes()).unwrap();
            back.join_egress(&r.egress_text()).unwrap();
            assert_eq!(back.identity, r.identity);
            assert_eq!(back.child.base_url(), "http://127.0.0.1:4000");
            assert_eq!(back.child.kind, CredentialKind::ApiKey);
            assert_eq!(back.child.user, r.child.user);
            assert_eq!(back.child.session.expose(), b"bottle-00ff");
            assert_eq!(back.child.egress, mode);
            assert_eq!(back.child.api_socket, r.child.api_socket);
        }
    }

    #[test]
    fn parse_errors_never_show_the_session() {
        let text = b"pid=x\nsession=bottle-SECRET\n";
        let e = RunRecord::parse_state(text).unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn the_egress_record_is_bound_to_the_process() {
        let r = record(EgressMode::Allowlist);
        let text = r.egress_text();
        let mut other = record(EgressMode::Open);
        other.identity.starttime = 12346;
        assert!(other.join_egress(&text).is_err());
        let mut other = record(EgressMode::Open);
        other.identity.pid = 2;
        assert!(other.join_egress(&text).is_err());
        let mut r = record(EgressMode::Open);
        assert!(
            r.join_egress("pid=1\nstarttime=12345\nmode=api-only\n")
                .is_err(),
            "api-only needs its socket"
        );
        assert!(
            r.join_egress("pid=1\nstarttime=12345\nmode=closed\n")
                .is_err()
        );
    }

    #[test]
    fn identity_from_stat() {
        let stat = "1 (bottle-init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 2 0 777 100 1";
        assert_eq!(
            parse_identity(1, stat),
            Some(Identity {
                pid: 1,
                comm: "bottle-init".into(),
                starttime: 777
            })
        );
        let odd = "9 (a) b) R 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 2 0 42 100 1";
        assert_eq!(parse_identity(9, odd).unwrap().comm, "a) b");
        let me = Identity::current().unwrap();
        assert!(me.is_live());
        let stale = Identity {
            starttime: me.starttime + 1,
            ..me.clone()
        };
        assert!(!stale.is_live());
    }

    #[test]
    fn publish_then_read_and_modes_and_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut r = record(EgressMode::ApiOnly);
        r.identity = Identity::current().unwrap();
        let published = publish(&dir, &r).unwrap();
        for f in [STATE_FILE, EGRESS_FILE] {
            let md = fs::metadata(dir.join(f)).unwrap();
            assert_eq!(md.mode() & 0o777, 0o600, "{f}");
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let back = read(&dir).unwrap();
        assert_eq!(back.child.session.expose(), b"bottle-00ff");
        assert_eq!(back.child.egress, EgressMode::ApiOnly);
        // Our own record is not "another init".
        assert_eq!(other_live_init(&dir), None);
        // Without the egress record, exec refuses and says why.
        let egress = fs::read(dir.join(EGRESS_FILE)).unwrap();
        fs::remove_file(dir.join(EGRESS_FILE)).unwrap();
        match read(&dir) {
            Err(ReadError::Missing(m)) => assert!(m.contains("egress"), "{m}"),
            other => panic!("{other:?}"),
        }
        fs::write(dir.join(EGRESS_FILE), egress).unwrap();
        // A group/other-readable file is refused.
        let state = dir.join(STATE_FILE);
        fs::set_permissions(&state, fs::Permissions::from_mode(0o644)).unwrap();
        match read(&dir) {
            Err(ReadError::Missing(m)) => assert!(m.contains("0600"), "{m}"),
            other => panic!("{other:?}"),
        }
        fs::set_permissions(&state, fs::Permissions::from_mode(0o600)).unwrap();
        drop(published);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "the guard removes both"
        );
    }

    #[test]
    fn a_stale_record_is_not_running_and_another_inits_files_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut r = record(EgressMode::Open);
        r.identity = Identity::current().unwrap();
        let ours = publish(&dir, &r).unwrap();
        // Another process replaced the record (a second init would, had it not refused).
        let mut theirs = record(EgressMode::Open);
        theirs.identity.starttime += 1;
        let mut bytes = theirs.state_bytes();
        write_private(&dir, STATE_FILE, &bytes).unwrap();
        crate::secret::wipe(&mut bytes);
        assert_eq!(read(&dir).unwrap_err(), ReadError::NotRunning { pid: 1 });
        drop(ours);
        assert!(dir.join(STATE_FILE).exists(), "not ours: left alone");
    }
}
