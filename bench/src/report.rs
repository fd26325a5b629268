//! The result table (Markdown), the target checks from issue 6, and the machine description
//! saved with every run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::startup::StartupResult;

pub struct Cell {
    pub conc: usize,
    pub n: u64,
    pub secs: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub handshakes: u64,
    pub proxy_cpu: f64,
    pub upstream_cpu: f64,
}

pub struct SseSummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub struct SysResult {
    pub name: String,
    pub failed: Option<String>,
    pub has_process: bool,
    pub idle_rss_kib: u64,
    pub cells: Vec<Cell>,
    pub sse: SseSummary,
    /// Issue 11's scenario: 5 streams x 20 events 50 ms apart.
    pub relay: SseSummary,
    pub mem_sse: SseSummary,
    pub peak_rss_kib: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl SysResult {
    pub fn failed(name: &str, why: String) -> SysResult {
        let nan = || SseSummary {
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
        };
        SysResult {
            name: name.into(),
            failed: Some(why),
            has_process: false,
            idle_rss_kib: 0,
            cells: vec![],
            sse: nan(),
            relay: nan(),
            mem_sse: nan(),
            peak_rss_kib: 0,
            errors: 0,
            first_error: None,
        }
    }
    fn cell(&self, c: usize) -> Option<&Cell> {
        self.cells.iter().find(|x| x.conc == c)
    }
    fn ok(&self) -> bool {
        self.failed.is_none()
    }
    fn handshakes_per_1000(&self) -> f64 {
        let n: u64 = self.cells.iter().map(|c| c.n).sum();
        let h: u64 = self.cells.iter().map(|c| c.handshakes).sum();
        if n == 0 {
            f64::NAN
        } else {
            h as f64 * 1000.0 / n as f64
        }
    }
    fn cpu_per_10k(&self) -> f64 {
        let n: u64 = self.cells.iter().map(|c| c.n).sum();
        let s: f64 = self.cells.iter().map(|c| c.proxy_cpu).sum();
        if n == 0 || !self.has_process {
            f64::NAN
        } else {
            s * 10_000.0 / n as f64
        }
    }
    fn mib(&self, kib: u64) -> f64 {
        if !self.has_process || !self.ok() {
            f64::NAN
        } else {
            kib as f64 / 1024.0
        }
    }
}

pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub mem: String,
    pub hostname: String,
    pub date: String,
    pub stamp: String,
    pub loadavg: String,
    pub versions: Vec<String>,
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn cmd_line(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| format!("{prog}: not found"))
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let mem = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
            .unwrap_or_default();
        // SAFETY: sysconf has no memory effects.
        let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
        let mut versions = vec![
            cmd_line("nginx", &["-v"]),
            cmd_line("haproxy", &["-v"]),
            cmd_line("tini", &["--version"]),
        ];
        if let Ok(rev) = std::env::var("BENCH_GIT_REV") {
            versions.push(format!("bottle-init commit {rev}"));
        }
        Machine {
            nproc,
            cpu,
            kernel: read("/proc/sys/kernel/osrelease"),
            mem,
            hostname: read("/proc/sys/kernel/hostname"),
            date: cmd_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            stamp: cmd_line("date", &["-u", "+%Y-%m-%d-%H%M"]),
            loadavg: Self::load_now(),
            versions,
        }
    }
    pub fn load_now() -> String {
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }
    pub fn one_line(&self) -> String {
        format!(
            "{} x {} | Linux {} | {} RAM | {}",
            self.nproc, self.cpu, self.kernel, self.mem, self.hostname
        )
    }
}

pub fn file_name(m: &Machine, label: Option<&str>, quick: bool) -> String {
    let desc: String = label
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}-{}cpu", m.hostname, m.nproc))
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "{}-{}{}.md",
        m.stamp,
        desc,
        if quick { "-quick" } else { "" }
    )
}

pub struct Report<'a> {
    pub machine: &'a Machine,
    pub load_after: &'a str,
    pub quick: bool,
    pub plan_text: String,
    pub systems: &'a [SysResult],
    pub startup: Option<&'a StartupResult>,
    pub static_size: Option<(PathBuf, u64)>,
    pub bottle_init: Option<&'a Path>,
}

pub struct Rendered {
    pub table: String,
    pub targets: String,
    pub full: String,
}

fn f(v: f64, prec: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.prec$}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

pub fn render(r: &Report) -> Rendered {
    let sys = |name: &str| r.systems.iter().find(|s| s.name == name && s.ok());
    let names: Vec<&str> = r.systems.iter().map(|s| s.name.as_str()).collect();
    let bottle = sys("bottle-init");
    let nginx = sys("nginx");
    let direct = sys("direct");

    type Metric<'m> = (String, usize, Box<dyn Fn(&SysResult) -> f64 + 'm>);
    let mut rows: Vec<Metric> = Vec::new();
    let concs: Vec<usize> = r
        .systems
        .iter()
        .flat_map(|s| s.cells.iter().map(|c| c.conc))
        .fold(vec![], |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        });
    let cellv =
        |c: usize, g: fn(&Cell) -> f64| move |s: &SysResult| s.cell(c).map(g).unwrap_or(f64::NAN);
    for &c in &concs {
        rows.push((
            format!("req/s, concurrency {c}"),
            0,
            Box::new(cellv(c, |x| x.rps)),
        ));
    }
    for &c in &concs {
        rows.push((
            format!("p50 latency ms, concurrency {c}"),
            3,
            Box::new(cellv(c, |x| x.p50_ms)),
        ));
    }
    for &c in &concs {
        rows.push((
            format!("p99 latency ms, concurrency {c}"),
            3,
            Box::new(cellv(c, |x| x.p99_ms)),
        ));
    }
    rows.push((
        "SSE relay delay p50 ms".into(),
        3,
        Box::new(|s: &SysResult| s.sse.p50_ms),
    ));
    rows.push((
        "SSE relay delay p99 ms".into(),
        3,
        Box::new(|s: &SysResult| s.sse.p99_ms),
    ));
    rows.push((
        "SSE relay delay p50 ms, 5 streams x 20 events 50 ms apart".into(),
        3,
        Box::new(|s: &SysResult| s.relay.p50_ms),
    ));
    rows.push((
        "SSE relay delay p99 ms, 5 streams x 20 events 50 ms apart".into(),
        3,
        Box::new(|s: &SysResult| s.relay.p99_ms),
    ));
    rows.push((
        "SSE relay delay p99 ms, 256 streams".into(),
        3,
        Box::new(|s: &SysResult| s.mem_sse.p99_ms),
    ));
    rows.push((
        "upstream TLS handshakes / 1000 req (after warm-up)".into(),
        2,
        Box::new(|s: &SysResult| s.handshakes_per_1000()),
    ));
    rows.push((
        "RSS idle MiB (all processes)".into(),
        1,
        Box::new(|s: &SysResult| s.mib(s.idle_rss_kib)),
    ));
    rows.push((
        "RSS peak MiB, 256 streams".into(),
        1,
        Box::new(|s: &SysResult| s.mib(s.peak_rss_kib)),
    ));
    rows.push((
        "proxy CPU s / 10k req".into(),
        2,
        Box::new(|s: &SysResult| s.cpu_per_10k()),
    ));
    for &c in concs.iter().filter(|&&c| c > 1) {
        rows.push((
            format!("proxy CPU, % of one core, concurrency {c}"),
            0,
            Box::new(move |s: &SysResult| {
                if !s.has_process {
                    return f64::NAN;
                }
                s.cell(c)
                    .map(|x| 100.0 * x.proxy_cpu / x.secs)
                    .unwrap_or(f64::NAN)
            }),
        ));
    }
    if let Some(&c) = concs.last() {
        rows.push((
            format!("upstream CPU, % of one core, concurrency {c}"),
            0,
            Box::new(move |s: &SysResult| {
                s.cell(c)
                    .map(|x| 100.0 * x.upstream_cpu / x.secs)
                    .unwrap_or(f64::NAN)
            }),
        ));
    }
    rows.push((
        "failed requests".into(),
        0,
        Box::new(|s: &SysResult| if s.ok() { s.errors as f64 } else { f64::NAN }),
    ));

    let mut t = String::new();
    let _ = write!(t, "| metric |");
    for n in &names {
        let _ = write!(t, " {n} |");
    }
    let has_ratios = bottle.is_some();
    if has_ratios {
        let _ = write!(t, " bottle-init / nginx | bottle-init / direct |");
    }
    t.push('\n');
    t.push_str("|---|");
    for _ in &names {
        t.push_str("---:|");
    }
    if has_ratios {
        t.push_str("---:|---:|");
    }
    t.push('\n');
    for (label, prec, get) in &rows {
        let _ = write!(t, "| {label} |");
        for s in r.systems {
            let v = if s.ok() { get(s) } else { f64::NAN };
            let _ = write!(t, " {} |", f(v, *prec));
        }
        if let Some(b) = bottle {
            let bv = get(b);
            let _ = write!(
                t,
                " {} | {} |",
                nginx.map(|n| ratio(bv, get(n))).unwrap_or("-".into()),
                direct.map(|d| ratio(bv, get(d))).unwrap_or("-".into())
            );
        }
        t.push('\n');
    }
    for s in r.systems {
        if let Some(why) = &s.failed {
            let _ = writeln!(
                t,
                "\n**{} failed:** {}",
                s.name,
                why.lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(6)
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        } else if s.errors > 0 {
            let _ = writeln!(
                t,
                "\n**{}: {} failed requests**, first: {}",
                s.name,
                s.errors,
                s.first_error.as_deref().unwrap_or("?")
            );
        }
    }

    // Start-up.
    t.push('\n');
    if let Some(st) = r.startup {
        let ms = |v: f64| f(v / 1e6, 3);
        let _ = writeln!(
            t,
            "| init start-up ({} runs, child = a tiny program that stamps CLOCK_MONOTONIC) | no init | tini | bottle-init |",
            st.runs
        );
        t.push_str("|---|---:|---:|---:|\n");
        let b = st.bottle;
        let _ = writeln!(
            t,
            "| spawn to child exec, median ms | {} | {} | {} |",
            ms(st.bare.0),
            ms(st.tini.0),
            b.map(|x| ms(x.0)).unwrap_or("-".into())
        );
        let _ = writeln!(
            t,
            "| spawn to child exec, p90 ms | {} | {} | {} |",
            ms(st.bare.1),
            ms(st.tini.1),
            b.map(|x| ms(x.1)).unwrap_or("-".into())
        );
        let _ = writeln!(
            t,
            "| spawn to init exit, median ms | - | {} | {} |",
            ms(st.tini_total),
            st.bottle_total.map(ms).unwrap_or("-".into())
        );
        if let Some(b) = b {
            let _ = writeln!(
                t,
                "\nStart-up overhead of bottle-init over tini (median): **{} ms**.",
                ms(b.0 - st.tini.0)
            );
        }
    }
    if let Some((p, n)) = &r.static_size {
        let _ = writeln!(
            t,
            "\nStatic release binary: `{}`: {} bytes ({:.2} MiB).",
            p.display(),
            n,
            *n as f64 / 1048576.0
        );
    }

    // Is the upstream fast enough? Direct (client does the TLS) against the best proxy.
    if let Some(d) = direct {
        for c in &d.cells {
            let best = r
                .systems
                .iter()
                .filter(|s| s.ok() && s.has_process)
                .filter_map(|s| s.cell(c.conc).map(|x| (x.rps, s.name.as_str())))
                .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a });
            if best.0 > 0.0 && c.conc > 1 {
                let _ = writeln!(
                    t,
                    "
Upstream headroom at concurrency {}: direct {:.0} req/s vs the fastest proxy ({}) {:.0} req/s = {:.1}x; upstream CPU during direct {:.0}% of one core.",
                    c.conc,
                    c.rps,
                    best.1,
                    best.0,
                    c.rps / best.0,
                    100.0 * c.upstream_cpu / c.secs
                );
            }
        }
    }
    let targets = targets(r, bottle, nginx, direct);
    let m = r.machine;
    let mut full = String::new();
    let _ = writeln!(
        full,
        "# bottle-init benchmark, {}{}\n",
        m.date,
        if r.quick {
            " (--quick: smoke run, not for comparison)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        full,
        "- Machine: {} cores, {}; Linux {}; {} RAM; host `{}`",
        m.nproc, m.cpu, m.kernel, m.mem, m.hostname
    );
    let _ = writeln!(
        full,
        "- Load average (1/5/15 min): before {}, after {}",
        m.loadavg, r.load_after
    );
    let _ = writeln!(
        full,
        "- Client, proxy and upstream share all cores on loopback; nothing is pinned."
    );
    let _ = writeln!(full, "- Versions: {}", m.versions.join("; "));
    if let Some(b) = r.bottle_init {
        let _ = writeln!(full, "- bottle-init binary: `{}`", b.display());
    }
    let _ = writeln!(full, "- Plan: {}\n", r.plan_text);
    full.push_str(&t);
    full.push('\n');
    full.push_str(&targets);
    Rendered {
        table: t,
        targets,
        full,
    }
}

fn targets(
    r: &Report,
    bottle: Option<&SysResult>,
    nginx: Option<&SysResult>,
    direct: Option<&SysResult>,
) -> String {
    let mut out = String::from("Targets (issue 6), bottle-init measured in this run:\n");
    let Some(b) = bottle else {
        out.push_str("- not evaluated: bottle-init was not measured\n");
        return out;
    };
    let mut line = |ok: Option<bool>, text: String| {
        let tag = match ok {
            Some(true) => "MET   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(out, "- [{tag}] {text}");
    };
    let cmp = |a: f64, bnd: f64, le: bool| {
        if a.is_nan() || bnd.is_nan() {
            None
        } else {
            Some(if le { a <= bnd } else { a >= bnd })
        }
    };
    // Issue 6's goal, and issue 11's (1.30x) beside it.
    if let (Some(bc), Some(dc)) = (b.cell(1), direct.and_then(|d| d.cell(1))) {
        for (factor, tag) in [(1.10, ""), (1.30, "[issue 11] ")] {
            line(
                cmp(bc.p50_ms, dc.p50_ms * factor, true),
                format!(
                    "{tag}p50 at concurrency 1 within {factor:.2}x of direct: {:.3} ms vs {:.3} ms ({})",
                    bc.p50_ms,
                    dc.p50_ms,
                    ratio(bc.p50_ms, dc.p50_ms)
                ),
            );
        }
    }
    if let Some(n) = nginx {
        for bc in &b.cells {
            if let Some(nc) = n.cell(bc.conc) {
                line(
                    cmp(bc.p50_ms, nc.p50_ms, true),
                    format!(
                        "p50 no worse than nginx at concurrency {}: {:.3} vs {:.3} ms ({})",
                        bc.conc,
                        bc.p50_ms,
                        nc.p50_ms,
                        ratio(bc.p50_ms, nc.p50_ms)
                    ),
                );
                line(
                    cmp(bc.p99_ms, nc.p99_ms, true),
                    format!(
                        "p99 no worse than nginx at concurrency {}: {:.3} vs {:.3} ms ({})",
                        bc.conc,
                        bc.p99_ms,
                        nc.p99_ms,
                        ratio(bc.p99_ms, nc.p99_ms)
                    ),
                );
            }
        }
        for c in [16, 256] {
            if let (Some(bc), Some(nc)) = (b.cell(c), n.cell(c)) {
                line(
                    cmp(bc.rps, nc.rps, false),
                    format!(
                        "throughput at concurrency {c} at least nginx's: {:.0} vs {:.0} req/s ({})",
                        bc.rps,
                        nc.rps,
                        ratio(bc.rps, nc.rps)
                    ),
                );
            }
        }
    } else {
        line(
            None,
            "comparisons with nginx: nginx was not measured".into(),
        );
    }
    if let Some(n) = nginx {
        line(
            cmp(b.relay.p99_ms, n.relay.p99_ms, true),
            format!(
                "[issue 11] SSE relay delay p99 (5 streams x 20 events 50 ms apart) at or below \
                 nginx's: {:.3} vs {:.3} ms ({})",
                b.relay.p99_ms,
                n.relay.p99_ms,
                ratio(b.relay.p99_ms, n.relay.p99_ms)
            ),
        );
    }
    let p = b.sse.p99_ms;
    line(
        if p.is_nan() { None } else { Some(p < 1.0) },
        format!("SSE relay delay p99 under 1 ms: {:.3} ms", b.sse.p99_ms),
    );
    let h = b.handshakes_per_1000();
    line(
        if h.is_nan() { None } else { Some(h == 0.0) },
        format!(
            "zero upstream handshakes per 1000 requests after warm-up: {}",
            f(h, 2)
        ),
    );
    let bm = b.peak_rss_kib as f64 / 1024.0;
    line(
        Some(bm < 8.0),
        format!("RSS under 8 MiB with 256 streams: {bm:.1} MiB"),
    );
    if let Some(n) = nginx {
        let nm = n.peak_rss_kib as f64 / 1024.0;
        line(
            Some(bm <= nm / 2.0),
            format!(
                "RSS with 256 streams at most half of nginx's: {bm:.1} vs {nm:.1} MiB ({})",
                ratio(bm, nm)
            ),
        );
        let (bi, ni) = (
            b.idle_rss_kib as f64 / 1024.0,
            n.idle_rss_kib as f64 / 1024.0,
        );
        line(
            Some(bi <= ni / 2.0),
            format!(
                "idle RSS at most half of nginx's: {bi:.1} vs {ni:.1} MiB ({})",
                ratio(bi, ni)
            ),
        );
    }
    if let Some(st) = r.startup
        && let Some(bs) = st.bottle
    {
        let d = (bs.0 - st.tini.0) / 1e6;
        line(
            Some(d < 2.0),
            format!(
                "start-up overhead over tini under 2 ms: {d:.3} ms (median of {} runs)",
                st.runs
            ),
        );
    }
    out
}
