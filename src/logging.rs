//! Logging that never blocks PID 1.
//!
//! On a terminal, stderr is the child's terminal too, and the child can stop its output
//! (`tcflow(TCOOFF)`, or Ctrl-S): from then on every write to fd 2 blocks. Setting O_NONBLOCK
//! on fd 2 is no way out, because that open file description is the child's stderr as well.
//! So once the child exists, log lines go into a bounded queue that one writer thread drains;
//! the proxy and the init loop only ever `try_send`. When the queue is full a line is dropped
//! and counted, and the writer reports the count ("N log lines were dropped") as soon as it
//! can write again.
//!
//! Life cycle (main drives it):
//! 1. [`init`]: lines are written synchronously (nothing else can block the terminal yet, and
//!    a start-up error must reach the user before bottle-init exits);
//! 2. [`hold`], right before the child is forked: lines queue up;
//! 3. [`start_writer`], after PID 1 dropped its privileges (the writer is a thread: it must be
//!    created after the drop, since capability sets are per thread; it inherits the fully
//!    blocked signal mask like every thread);
//! 4. [`finish`] before exiting: waits a bounded time for the queue to drain, or writes the
//!    queue itself when no writer was started (the child is gone by then).
//!
//! The filter (`BOTTLE_LOG`) is a comma list of `level` or `module=level` directives
//! (`off`, `error`, `warn`, `info`, `debug`, `trace`); the longest matching module wins.
//!
//! The format (`BOTTLE_LOG_FORMAT`): `human` (default), `bottle-init: <level>: <message>`, or
//! `json`, one object per line, `{"level": ..., "target": ..., "msg": ...}` plus the record's
//! key-value pairs (the proxy's request line carries its fields that way, see
//! `proxy::ctx::RequestLine`), for fleets that ship logs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::{LevelFilter, Log, Metadata, Record};

use crate::sys;

/// Lines the queue holds while stderr cannot take them.
pub const QUEUE_LINES: usize = 256;
/// A longer line is cut (log lines never carry data, so this only guards against surprises).
const MAX_LINE: usize = 8 * 1024;

/// `BOTTLE_LOG_FORMAT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Human,
    Json,
}

impl Format {
    /// `human` or `json` (case and surrounding spaces ignored); unset or empty: human.
    pub fn parse(v: Option<&str>) -> Result<Format, ()> {
        match v.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("human") => Ok(Format::Human),
            Some("json") => Ok(Format::Json),
            Some(_) => Err(()),
        }
    }
}

/// Parsed `BOTTLE_LOG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    default: LevelFilter,
    /// (module prefix, level), longest prefix first.
    modules: Vec<(String, LevelFilter)>,
    /// Directives that were not understood, for one warning.
    pub unknown: Vec<String>,
}

fn level(s: &str) -> Option<LevelFilter> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

impl Filter {
    pub fn parse(spec: &str, default: LevelFilter) -> Filter {
        let mut f = Filter {
            default,
            modules: Vec::new(),
            unknown: Vec::new(),
        };
        for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match d.split_once('=') {
                None => match level(d) {
                    Some(l) => f.default = l,
                    None => f.unknown.push(d.to_string()),
                },
                Some((m, l)) => match level(l) {
                    Some(l) if !m.trim().is_empty() => f.modules.push((m.trim().to_string(), l)),
                    _ => f.unknown.push(d.to_string()),
                },
            }
        }
        f.modules.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
        f
    }

    /// The level in force for a record's target (its module path).
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.modules
            .iter()
            .find(|(m, _)| {
                target == m
                    || target
                        .strip_prefix(m.as_str())
                        .is_some_and(|r| r.starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l)
    }

    fn max(&self) -> LevelFilter {
        self.modules
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, std::cmp::max)
    }
}

/// `bottle-init: <level>: <message>\n`, cut at [`MAX_LINE`].
pub fn format_line(level: &str, msg: &str) -> Vec<u8> {
    cut_line(format!("bottle-init: {level}: {msg}"))
}

/// One JSON object: level, target, the message, then `kvs` (keys in record order; a key
/// repeating one of the first three is prefixed with `kv_`). Cut lines stay JSON: the message
/// is shortened instead.
pub fn format_json(level: &str, target: &str, msg: &str, kvs: &dyn log::kv::Source) -> Vec<u8> {
    let mut fields = String::new();
    let _ = kvs.visit(&mut JsonFields(&mut fields));
    let mut msg = msg;
    let budget = MAX_LINE.saturating_sub(fields.len() + target.len() + 64);
    if msg.len() > budget {
        let mut cut = budget;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg = &msg[..cut];
    }
    let mut line = String::with_capacity(64 + msg.len() + fields.len());
    line.push_str("{\"level\":");
    json_str_into(&mut line, level);
    line.push_str(",\"target\":");
    json_str_into(&mut line, target);
    line.push_str(",\"msg\":");
    json_str_into(&mut line, msg);
    line.push_str(&fields);
    line.push_str("}\n");
    line.into_bytes()
}

/// Appends `s` as a JSON string.
pub fn json_str_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// No key-value pairs (an empty slice is an empty `Source`).
const NO_FIELDS: &[(&str, u64)] = &[];

/// Writes `,"key":value` for each pair; numbers, booleans and null bare, the rest as strings.
struct JsonFields<'a>(&'a mut String);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        self.0.push(',');
        if matches!(key, "level" | "target" | "msg") {
            json_str_into(self.0, &format!("kv_{key}"));
        } else {
            json_str_into(self.0, key);
        }
        self.0.push(':');
        value.visit(JsonValue(self.0))
    }
}

struct JsonValue<'a>(&'a mut String);

impl<'v> log::kv::VisitValue<'v> for JsonValue<'_> {
    fn visit_any(&mut self, value: log::kv::Value) -> Result<(), log::kv::Error> {
        json_str_into(self.0, &value.to_string());
        Ok(())
    }
    fn visit_null(&mut self) -> Result<(), log::kv::Error> {
        self.0.push_str("null");
        Ok(())
    }
    fn visit_u64(&mut self, v: u64) -> Result<(), log::kv::Error> {
        self.0.push_str(&v.to_string());
        Ok(())
    }
    fn visit_i64(&mut self, v: i64) -> Result<(), log::kv::Error> {
        self.0.push_str(&v.to_string());
        Ok(())
    }
    fn visit_bool(&mut self, v: bool) -> Result<(), log::kv::Error> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_str(&mut self, v: &str) -> Result<(), log::kv::Error> {
        json_str_into(self.0, v);
        Ok(())
    }
}

fn cut_line(mut line: String) -> Vec<u8> {
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" [...]");
    }
    line.push('\n');
    line.into_bytes()
}

/// The notice the writer prints once it can write again after dropping lines.
pub fn dropped_line(n: u64) -> Vec<u8> {
    format_line("warn", &dropped_message(n))
}

fn dropped_message(n: u64) -> String {
    let what = if n == 1 { "line was" } else { "lines were" };
    format!("{n} log {what} dropped because stderr was blocked (a stopped terminal?)")
}

struct Logger {
    filter: Filter,
    format: Format,
    queued: AtomicBool,
    tx: SyncSender<Vec<u8>>,
    rx: Mutex<Option<Receiver<Vec<u8>>>>,
    /// Lines sent and not yet written.
    pending: AtomicUsize,
    dropped: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl Logger {
    fn emit(&self, line: Vec<u8>) {
        if !self.queued.load(Ordering::Acquire) {
            let _ = sys::write_all(2, &line);
            return;
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.dropped.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn write_out(&self, line: &[u8]) {
        // Errors (a closed stderr) are nothing we could report anywhere.
        let _ = sys::write_all(2, line);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    fn write_dropped_notice(&self) {
        let n = self.dropped.swap(0, Ordering::AcqRel);
        if n > 0 {
            let line = match self.format {
                Format::Human => dropped_line(n),
                Format::Json => {
                    let msg = dropped_message(n);
                    format_json("warn", "bottle_init::logging", &msg, &NO_FIELDS)
                }
            };
            let _ = sys::write_all(2, &line);
        }
    }

    /// A line of ours (not a `log` record) in the configured format.
    fn own_line(&self, level: &str, msg: &str) -> Vec<u8> {
        match self.format {
            Format::Human => format_line(level, msg),
            Format::Json => format_json(level, "bottle_init", msg, &NO_FIELDS),
        }
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.filter.level_for(m.target())
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = r.level().as_str().to_ascii_lowercase();
        let msg = r.args().to_string();
        self.emit(match self.format {
            Format::Human => format_line(&level, &msg),
            Format::Json => format_json(&level, r.target(), &msg, r.key_values()),
        });
    }

    fn flush(&self) {}
}

/// Installs the logger. `spec` is `BOTTLE_LOG` (None or empty: `default`).
pub fn init(spec: Option<&str>, default: LevelFilter, format: Format) {
    let filter = Filter::parse(spec.unwrap_or(""), default);
    let unknown = filter.unknown.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
    let logger = LOGGER.get_or_init(|| Logger {
        filter,
        format,
        queued: AtomicBool::new(false),
        tx,
        rx: Mutex::new(Some(rx)),
        pending: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.filter.max());
    }
    if !unknown.is_empty() {
        log::warn!(
            "BOTTLE_LOG: ignoring {:?}; use error, warn, info, debug or module=level",
            unknown
        );
    }
}

/// From now on lines queue up instead of being written (call right before forking the child).
pub fn hold() {
    if let Some(l) = LOGGER.get() {
        l.queued.store(true, Ordering::Release);
    }
}

/// Starts the writer thread that drains the queue (lines are queued from now on).
pub fn start_writer() -> std::io::Result<()> {
    let Some(l) = LOGGER.get() else {
        return Ok(());
    };
    let Some(rx) = l.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return Ok(());
    };
    l.queued.store(true, Ordering::Release);
    std::thread::Builder::new()
        .name("log".into())
        .spawn(move || {
            sys::block_signals_in_thread();
            while let Ok(line) = rx.recv() {
                l.write_out(&line);
                while let Ok(line) = rx.try_recv() {
                    l.write_out(&line);
                }
                // Queue drained: the lines dropped meanwhile were newer than all written ones.
                l.write_dropped_notice();
            }
        })
        .map(drop)
}

/// An error line that is shown whatever `BOTTLE_LOG` says (the one-line start-up or exit
/// error), through the same path as every other line.
pub fn error_line(msg: &str) {
    match LOGGER.get() {
        Some(l) => l.emit(l.own_line("error", msg)),
        None => {
            let _ = sys::write_all(2, &format_line("error", msg));
        }
    }
}

/// Before exit: lets the writer drain the queue for at most `limit` (stderr may stay blocked
/// forever); when no writer was started, writes the queued lines here.
pub fn finish(limit: Duration) {
    let Some(l) = LOGGER.get() else { return };
    if let Some(rx) = l.rx.lock().unwrap_or_else(|p| p.into_inner()).take() {
        while let Ok(line) = rx.try_recv() {
            l.write_out(&line);
        }
        l.write_dropped_notice();
        return;
    }
    let deadline = Instant::now() + limit;
    while l.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Panics by thread name, recorded by the hook [`install_panic_hook`] sets.
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Replaces std's panic hook (which writes to stderr directly and could block): the message
/// is recorded for [`panic_of`] and, except for `quiet_thread` (whose supervisor reports it
/// in its own line), logged as an error.
pub fn install_panic_hook(quiet_thread: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let text = format!("{msg}{at}");
        if thread != quiet_thread {
            log::error!("internal error: thread {thread} panicked: {text}");
        }
        PANICS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((thread, text));
    }));
}

/// The recorded panic message of the thread named `thread`, if it panicked.
pub fn panic_of(thread: &str) -> Option<String> {
    PANICS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(t, _)| t == thread)
        .map(|(_, m)| m.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_levels_and_modules() {
        let f = Filter::parse("", LevelFilter::Info);
        assert_eq!(f.level_for("bottle_init::proxy"), LevelFilter::Info);
        let f = Filter::parse("warn", LevelFilter::Info);
        assert_eq!(f.level_for("bottle_init::init"), LevelFilter::Warn);
        let f = Filter::parse(
            "error, bottle_init::proxy=debug,bottle_init::proxy::tunnel=off,bogus,x=loud",
            LevelFilter::Info,
        );
        assert_eq!(f.level_for("bottle_init::init"), LevelFilter::Error);
        assert_eq!(f.level_for("bottle_init::proxy"), LevelFilter::Debug);
        assert_eq!(
            f.level_for("bottle_init::proxy::event_loop"),
            LevelFilter::Debug
        );
        assert_eq!(f.level_for("bottle_init::proxy::tunnel"), LevelFilter::Off);
        // A prefix only matches whole path segments.
        assert_eq!(f.level_for("bottle_init::proxyish"), LevelFilter::Error);
        assert_eq!(f.unknown, vec!["bogus".to_string(), "x=loud".to_string()]);
        assert_eq!(f.max(), LevelFilter::Debug);
        assert_eq!(
            Filter::parse("OFF", LevelFilter::Info).max(),
            LevelFilter::Off
        );
    }

    #[test]
    fn lines_are_formatted_and_bounded() {
        assert_eq!(format_line("warn", "x y"), b"bottle-init: warn: x y\n");
        let long = "é".repeat(MAX_LINE);
        let l = format_line("info", &long);
        assert!(l.len() <= MAX_LINE + 8, "{}", l.len());
        assert!(std::str::from_utf8(&l).unwrap().ends_with(" [...]\n"));
        assert_eq!(
            dropped_line(3),
            b"bottle-init: warn: 3 log lines were dropped because stderr was blocked (a stopped terminal?)\n"
        );
        assert!(
            String::from_utf8(dropped_line(1))
                .unwrap()
                .contains("1 log line was dropped")
        );
    }

    /// Every JSON line parses, whatever the message holds; the fields keep their JSON types;
    /// a field named like one of ours is renamed, never duplicated; a long line stays JSON.
    #[test]
    fn json_lines_parse_and_keep_their_fields() {
        let kvs: &[(&str, log::kv::Value)] = &[
            ("method", "POST".into()),
            ("status", 429u16.into()),
            ("in", 0u64.into()),
            ("model", log::kv::Value::null()),
            ("usage_unseen", false.into()),
            ("msg", "x".into()),
        ];
        let weird = "q\"uote \\ back\nnew\u{1}ctl \u{7f} é 🙂";
        let line = format_json("warn", "bottle_init::proxy", weird, &kvs);
        let text = String::from_utf8(line).unwrap();
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "bottle_init::proxy");
        assert_eq!(v["msg"], weird);
        assert_eq!(v["method"], "POST");
        assert_eq!(v["status"], 429);
        assert_eq!(v["in"], 0);
        assert!(v["model"].is_null());
        assert_eq!(v["usage_unseen"], false);
        assert_eq!(v["kv_msg"], "x");
        let long = "é".repeat(MAX_LINE);
        let line = format_json("info", "t", &long, &kvs);
        assert!(line.len() <= MAX_LINE + 8, "{}", line.len());
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(Format::parse(Some("Json")), Ok(Format::Json));
        assert_eq!(Format::parse(None), Ok(Format::Human));
        assert_eq!(Format::parse(Some("xml")), Err(()));
    }
}
