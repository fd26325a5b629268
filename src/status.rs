//! `bottle-init status`: what PID 1 has served in this run (issue 12). PID 1 answers on a Unix
//! socket next to its run record, `$BOTTLE_RUN_DIR/status.sock`: the directory is root-only
//! (0700, checked by `record::publish`), the socket 0600, and every connection's peer must
//! be uid 0 (SO_PEERCRED), so the child user can neither reach it nor, were the modes ever
//! loosened, be answered. One tiny thread serves it, one connection at a time, with short
//! timeouts, so a client that never reads cannot hold PID 1's proxy or init loop.
//!
//! The protocol is one line from the client, `json` or `text`, and the rendered snapshot back.
//! The snapshot holds counters only ([`Snapshot`]): no header, body, path or secret ever goes
//! in, so `status` has nothing to leak.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::proxy::{Stats, TokenCounts};

pub const SOCKET_FILE: &str = "status.sock";
/// How long one client may take to ask or to read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line read (`json` / `text`).
const MAX_ASK: usize = 16;

/// What `status` reports: counters over this run of PID 1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub uptime_s: u64,
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub tokens: TokenCounts,
    /// Input and output tokens by model.
    pub by_model: BTreeMap<String, (u64, u64)>,
    pub egress_allowed: u64,
    pub egress_denied: u64,
    /// Open client connections to the proxy.
    pub connections: u64,
    /// Requests answered 429 by a `BOTTLE_MAX_*` limit (in `by_status` too).
    pub limited: u64,
}

impl Snapshot {
    pub fn of(stats: &Stats, uptime: Duration) -> Snapshot {
        let tally = stats.with_tally(|t| t.clone());
        Snapshot {
            uptime_s: uptime.as_secs(),
            requests: stats.requests.load(Ordering::Relaxed),
            by_status: tally.by_status,
            tokens: tally.tokens,
            by_model: tally.by_model,
            egress_allowed: tally.egress_allowed,
            egress_denied: tally.egress_denied,
            connections: stats.open_clients.load(Ordering::Relaxed) as u64,
            limited: tally.limited,
        }
    }

    /// `status --json`: one object, the keys of issue 12, one line.
    pub fn to_json(&self) -> String {
        let by_status = self
            .by_status
            .iter()
            .map(|(s, n)| format!("\"{s}\": {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let by_model = self
            .by_model
            .iter()
            .map(|(m, (i, o))| format!("{}: {{\"input\": {i}, \"output\": {o}}}", json_str(m)))
            .collect::<Vec<_>>()
            .join(", ");
        let t = &self.tokens;
        format!(
            "{{\"uptime_s\": {}, \"requests\": {}, \"by_status\": {{{by_status}}}, \"tokens\": {{\"input\": {}, \
             \"output\": {}, \"cache_read\": {}, \"cache_write\": {}}}, \"by_model\": {{{by_model}}}, \
             \"egress\": {{\"allowed\": {}, \"denied\": {}}}, \"connections\": {}}}\n",
            self.uptime_s,
            self.requests,
            t.input,
            t.output,
            t.cache_read,
            t.cache_write,
            self.egress_allowed,
            self.egress_denied,
            self.connections
        )
    }

    /// `status`: the same figures for a person.
    pub fn to_text(&self) -> String {
        let s = self.uptime_s;
        let mut out = format!(
            "bottle-init: up {}h{:02}m{:02}s, {} connection(s) open\n",
            s / 3600,
            s / 60 % 60,
            s % 60,
            self.connections
        );
        let by_status = self
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        if by_status.is_empty() {
            out.push_str(&format!("requests: {}\n", self.requests));
        } else {
            out.push_str(&format!("requests: {} ({by_status})\n", self.requests));
        }
        if self.limited > 0 {
            out.push_str(&format!(
                "  {} answered 429 by BOTTLE_MAX_REQUESTS_PER_MINUTE / BOTTLE_MAX_TOKENS\n",
                self.limited
            ));
        }
        let t = &self.tokens;
        out.push_str(&format!(
            "tokens: input {}, output {}, cache read {}, cache write {}\n",
            t.input, t.output, t.cache_read, t.cache_write
        ));
        for (m, (i, o)) in &self.by_model {
            out.push_str(&format!("  {m}: input {i}, output {o}\n"));
        }
        out.push_str(&format!(
            "egress: {} allowed, {} denied\n",
            self.egress_allowed, self.egress_denied
        ));
        out
    }
}

/// A JSON string (the model name is visible ASCII already; `"` and `\` are escaped).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::logging::json_str_into(&mut out, s);
    out
}

/// The bound socket, before its thread serves it.
pub struct StatusServer {
    listener: UnixListener,
    started: Instant,
}

/// Removes the socket file when PID 1 exits, if it is still the one bound.
pub struct Bound {
    path: PathBuf,
    ino: u64,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `dir/status.sock` (as root, after `record::publish` made `dir` root-only), mode 0600.
/// A stale socket of an earlier run is replaced (start-up refused a live other init already).
pub fn bind(dir: &Path) -> std::io::Result<(StatusServer, Bound)> {
    let path = dir.join(SOCKET_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_dir() => {
            return Err(std::io::Error::other(format!(
                "{} is a directory",
                path.display()
            )));
        }
        Ok(_) => std::fs::remove_file(&path)?,
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let ino = std::fs::symlink_metadata(&path)?.ino();
    let server = StatusServer {
        listener,
        started: Instant::now(),
    };
    Ok((server, Bound { path, ino }))
}

impl StatusServer {
    /// Serves on its own thread, forever (it inherits the caller's capabilities: start it
    /// after PID 1's drop).
    pub fn spawn(self, stats: Arc<Stats>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("status".into())
            .spawn(move || {
                crate::sys::block_signals_in_thread();
                for conn in self.listener.incoming() {
                    match conn {
                        Ok(c) => self.answer(c, &stats),
                        Err(e) => {
                            log::warn!("status: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map(drop)
    }

    fn answer(&self, mut conn: UnixStream, stats: &Stats) {
        match crate::sys::peer_uid(conn.as_raw_fd()) {
            Ok(0) => {}
            Ok(uid) => {
                log::warn!("status: refused a connection from uid {uid} (only root may ask)");
                return;
            }
            Err(e) => {
                log::warn!("status: cannot check the peer of a connection: {e}");
                return;
            }
        }
        let _ = conn.set_read_timeout(Some(CLIENT_TIMEOUT));
        let _ = conn.set_write_timeout(Some(CLIENT_TIMEOUT));
        let mut ask = [0u8; MAX_ASK];
        let mut n = 0;
        while n < ask.len() && !ask[..n].contains(&b'\n') {
            match conn.read(&mut ask[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let snap = Snapshot::of(stats, self.started.elapsed());
        let answer = match ask[..n].trim_ascii() {
            b"json" => snap.to_json(),
            _ => snap.to_text(),
        };
        let _ = conn.write_all(answer.as_bytes());
    }
}

/// Why `status` got no answer.
#[derive(Debug)]
pub struct AskError(pub std::io::Error);

/// The client side: asks PID 1's socket in `dir` for the snapshot, rendered.
pub fn ask(dir: &Path, json: bool) -> Result<String, AskError> {
    let mut s = UnixStream::connect(dir.join(SOCKET_FILE)).map_err(AskError)?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT * 2))
        .map_err(AskError)?;
    s.write_all(if json { b"json\n" } else { b"text\n" })
        .map_err(AskError)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(AskError)?;
    if out.is_empty() {
        return Err(AskError(std::io::Error::other(
            "PID 1 closed without answering",
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut s = Snapshot {
            uptime_s: 3725,
            requests: 7,
            tokens: TokenCounts {
                input: 10,
                output: 20,
                cache_read: 30,
                cache_write: 40,
            },
            egress_allowed: 2,
            egress_denied: 3,
            connections: 1,
            limited: 1,
            ..Snapshot::default()
        };
        s.by_status.insert(200, 5);
        s.by_status.insert(429, 2);
        s.by_model.insert("claude-a".into(), (4, 5));
        s.by_model.insert("we\"ird\\".into(), (6, 15));
        s
    }

    #[test]
    fn json_has_exactly_the_issue_keys() {
        assert_eq!(
            sample().to_json(),
            "{\"uptime_s\": 3725, \"requests\": 7, \"by_status\": {\"200\": 5, \"429\": 2}, \
             \"tokens\": {\"input\": 10, \"output\": 20, \"cache_read\": 30, \"cache_write\": 40}, \
             \"by_model\": {\"claude-a\": {\"input\": 4, \"output\": 5}, \"we\\\"ird\\\\\": {\"input\": 6, \"output\": 15}}, \
             \"egress\": {\"allowed\": 2, \"denied\": 3}, \"connections\": 1}\n"
        );
        assert!(
            Snapshot::default()
                .to_json()
                .contains("\"by_status\": {}, ")
        );
    }

    #[test]
    fn text_names_every_figure() {
        let t = sample().to_text();
        for want in [
            "up 1h02m05s, 1 connection(s) open",
            "requests: 7 (200: 5, 429: 2)",
            "1 answered 429 by BOTTLE_MAX",
            "tokens: input 10, output 20, cache read 30, cache write 40",
            "  claude-a: input 4, output 5",
            "egress: 2 allowed, 3 denied",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        assert!(Snapshot::default().to_text().contains("requests: 0\n"));
    }

    /// The server answers root (this test runs as root under scripts/test) and counts what
    /// the proxy's tally holds; a second bind replaces a stale socket.
    #[test]
    fn ask_and_answer_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        stats.with_tally(|t| {
            t.by_status.insert(200, 3);
            t.egress_denied = 4;
        });
        drop(bind(dir.path()).unwrap());
        assert!(!dir.path().join(SOCKET_FILE).exists(), "guard removes it");
        let (server, _bound) = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(SOCKET_FILE))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        server.spawn(stats).unwrap();
        if crate::sys::geteuid() == 0 {
            let json = ask(dir.path(), true).unwrap();
            assert!(json.contains("\"by_status\": {\"200\": 3}"), "{json}");
            assert!(json.contains("\"denied\": 4"), "{json}");
            assert!(
                ask(dir.path(), false)
                    .unwrap()
                    .contains("egress: 0 allowed, 4 denied")
            );
        } else {
            // Not root: the server must refuse us (peer uid check).
            assert!(ask(dir.path(), true).is_err());
        }
    }
}
