//! The whole benchmark: start the upstream, measure each system in turn, measure init
//! start-up, then print and save the table. Harness failures (a system that will not start,
//! requests that fail) make the exit status non-zero; a missed target does not.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::load::{self, Outcome, Target};
use crate::peers::{self, Kind, Running};
use crate::procstat;
use crate::report::{self, Cell, SseSummary, SysResult};
use crate::startup;
use crate::upstream;

pub struct Config {
    pub quick: bool,
    /// Only what issue 11's targets compare (concurrency 1, the 5-stream relay, 4 rounds):
    /// short enough to alternate binaries on a shared machine while it is quiet.
    pub focus: bool,
    pub bottle_init: Option<PathBuf>,
    pub static_binary: Option<PathBuf>,
    pub results: PathBuf,
    pub systems: Vec<Kind>,
    pub label: Option<String>,
    /// Measure init start-up against tini.
    pub startup: bool,
}

struct Plan {
    warm: Duration,
    dur: Duration,
    concs: Vec<usize>,
    sse_conc: usize,
    sse_rounds: usize,
    sse_events: u64,
    pace_ms: u64,
    mem_streams: usize,
    mem_events: u64,
    /// Issue 11's relay scenario: `relay_streams` concurrent streams of `relay_events` events
    /// `relay_pace_ms` apart, repeated `relay_rounds` times on the same connections.
    relay_streams: usize,
    relay_events: u64,
    relay_pace_ms: u64,
    relay_rounds: usize,
    startup_runs: usize,
}

const BODY: usize = 100 * 1024;
const REAL_TOKEN: &str = "sk-ant-oat01-bench-real-token-0123456789abcdef";

struct UpstreamProc {
    child: Child,
    port: u16,
    control: String,
}

impl Drop for UpstreamProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_upstream(dir: &Path) -> Result<UpstreamProc, String> {
    let certs = crate::certs::generate(dir)?;
    let port = peers::free_port()?;
    let control = format!("127.0.0.1:{}", peers::free_port()?);
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(me)
        .arg("upstream")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--listen")
        .arg(format!("[::1]:{port}"))
        .arg("--control")
        .arg(&control)
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .arg("--expect-auth")
        .arg(format!("Bearer {REAL_TOKEN}"))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the upstream: {e}"))?;
    let mut line = String::new();
    let out = child.stdout.take().ok_or("upstream stdout")?;
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("upstream: {e}"))?;
    if line.trim() != "ready" {
        let _ = child.kill();
        return Err(format!("upstream did not start (said {line:?})"));
    }
    Ok(UpstreamProc {
        child,
        port,
        control,
    })
}

/// 256 client connections, as many proxy sockets and pooled upstream connections, and
/// haproxy's maxconn need more than the usual 1024 descriptors; children inherit this.
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub fn run(cfg: Config) -> Result<bool, String> {
    raise_fd_limit();
    let plan = if cfg.focus {
        Plan {
            warm: Duration::from_secs(1),
            dur: Duration::from_secs(3),
            concs: vec![1],
            sse_conc: 1,
            sse_rounds: 1,
            sse_events: 5,
            pace_ms: 20,
            mem_streams: 1,
            mem_events: 5,
            relay_streams: 5,
            relay_events: 20,
            relay_pace_ms: 50,
            relay_rounds: 4,
            startup_runs: 0,
        }
    } else if cfg.quick {
        Plan {
            warm: Duration::from_millis(300),
            dur: Duration::from_secs(1),
            concs: vec![1, 16, 256],
            sse_conc: 4,
            sse_rounds: 1,
            sse_events: 20,
            pace_ms: 20,
            mem_streams: 256,
            mem_events: 30,
            relay_streams: 5,
            relay_events: 20,
            relay_pace_ms: 50,
            relay_rounds: 1,
            startup_runs: 20,
        }
    } else {
        Plan {
            warm: Duration::from_secs(1),
            dur: Duration::from_secs(5),
            concs: vec![1, 16, 256],
            sse_conc: 16,
            sse_rounds: 2,
            sse_events: 50,
            pace_ms: 20,
            mem_streams: 256,
            mem_events: 100,
            relay_streams: 5,
            relay_events: 20,
            relay_pace_ms: 50,
            relay_rounds: 3,
            startup_runs: 200,
        }
    };
    let dir = std::env::temp_dir().join(format!("bottle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let machine = report::Machine::describe();
    eprintln!(
        "bench: {} | load before: {}",
        machine.one_line(),
        machine.loadavg
    );

    let up = start_upstream(&dir)?;
    let ca = dir.join("ca.pem");
    let upstream_pid = up.child.id() as i32;
    let nproc = machine.nproc;
    let bottle = cfg.bottle_init.clone().unwrap_or_default();
    let env = peers::Env {
        dir: &dir,
        upstream_port: up.port,
        ca: &ca,
        real_token: REAL_TOKEN,
        bottle_init: &bottle,
        nproc,
    };

    let mut results = Vec::new();
    let mut harness_ok = true;
    for &kind in &cfg.systems {
        if kind == Kind::BottleInit && cfg.bottle_init.is_none() {
            continue;
        }
        eprintln!("bench: {} ...", kind.name());
        match measure_system(kind, &env, &plan, &up, upstream_pid) {
            Ok(r) => {
                if r.errors > 0 {
                    eprintln!(
                        "bench: {}: {} failed requests (first: {})",
                        kind.name(),
                        r.errors,
                        r.first_error.as_deref().unwrap_or("?")
                    );
                    harness_ok = false;
                }
                results.push(r);
            }
            Err(e) => {
                eprintln!("bench: {} FAILED: {e}", kind.name());
                harness_ok = false;
                results.push(SysResult::failed(kind.name(), e));
            }
        }
    }

    let bottle_arg = cfg
        .bottle_init
        .as_deref()
        .map(|b| (b, up.port, ca.as_path()));
    let startup = if cfg.startup {
        eprintln!("bench: init start-up ({} runs each) ...", plan.startup_runs);
        let mut r = startup::measure(&dir, plan.startup_runs, bottle_arg);
        if let (Err(e), Some(_)) = (&r, bottle_arg) {
            // Keep the tini numbers even when bottle-init cannot run.
            eprintln!("bench: start-up of bottle-init FAILED: {e}");
            harness_ok = false;
            r = startup::measure(&dir, plan.startup_runs, None);
        }
        match r {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("bench: start-up FAILED: {e}");
                harness_ok = false;
                None
            }
        }
    } else {
        None
    };
    drop(up);
    let static_size = cfg
        .static_binary
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok().map(|m| (p.clone(), m.len())));
    let machine_after = report::Machine::load_now();
    let md = report::render(&report::Report {
        machine: &machine,
        load_after: &machine_after,
        quick: cfg.quick,
        plan_text: plan_text(&plan),
        systems: &results,
        startup: startup.as_ref(),
        static_size,
        bottle_init: cfg.bottle_init.as_deref(),
    });
    println!("{}", md.table);
    println!("{}", md.targets);
    let name = report::file_name(&machine, cfg.label.as_deref(), cfg.quick);
    // Smoke and focused runs go to results/tmp/ (git-ignored): not for comparison over time.
    let results = if cfg.quick || cfg.focus {
        cfg.results.join("tmp")
    } else {
        cfg.results.clone()
    };
    std::fs::create_dir_all(&results)
        .map_err(|e| format!("creating {}: {e}", results.display()))?;
    let path = results.join(name);
    std::fs::write(&path, &md.full).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("bench: saved {}", path.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(harness_ok)
}

fn plan_text(p: &Plan) -> String {
    format!(
        "throughput: {} s warm-up + {} s measured per cell, concurrency {:?}, 100 KB POST body, ~{} B SSE answer; \
         SSE relay: {} streams x {} rounds x {} events {} ms apart; issue 11 relay: {} streams x {} events {} ms apart, {} rounds; memory: {} streams x {} events; start-up: {} runs each",
        p.warm.as_secs_f64(),
        p.dur.as_secs_f64(),
        p.concs,
        upstream::canned_body_len(),
        p.sse_conc,
        p.sse_rounds,
        p.sse_events,
        p.pace_ms,
        p.relay_streams,
        p.relay_events,
        p.relay_pace_ms,
        p.relay_rounds,
        p.mem_streams,
        p.mem_events,
        p.startup_runs
    )
}

fn measure_system(
    kind: Kind,
    env: &peers::Env,
    plan: &Plan,
    up: &UpstreamProc,
    upstream_pid: i32,
) -> Result<SysResult, String> {
    let mut running: Running = peers::start(kind, env)?;
    let target = Arc::new(match running.listen {
        Some(a) => Target::Plain(a),
        None => Target::tls(SocketAddr::from(([127, 0, 0, 1], up.port)), env.ca)?,
    });
    let req = Arc::new(load::build_request(
        "/v1/messages?beta=true",
        &running.client_auth,
        BODY,
    ));
    let ctl = up.control.as_str();

    // One request proves the path works (and the credential arrives) before measuring.
    let probe = load::throughput(
        target.clone(),
        req.clone(),
        1,
        Duration::from_millis(0),
        Duration::from_millis(200),
        &mut || {},
        &mut || {},
    );
    if probe.samples.is_empty() {
        return Err(format!(
            "no successful request through {} ({})",
            kind.name(),
            probe.first_error.unwrap_or_default()
        ));
    }
    let st = upstream::stats(ctl)?;
    if st.bad_auth > 0 {
        return Err(format!(
            "{} did not deliver the real credential upstream",
            kind.name()
        ));
    }
    thread::sleep(Duration::from_millis(300));
    let idle_rss = procstat::rss_sum_kib(&running.pids());

    let mut cells = Vec::new();
    let mut errors = probe.errors;
    let mut first_error = None;
    for &c in &plan.concs {
        let mut snap = (Default::default(), 0.0, 0.0);
        let mut end = (Default::default(), 0.0, 0.0);
        let pids = running.pids();
        let o = load::throughput(
            target.clone(),
            req.clone(),
            c,
            plan.warm,
            plan.dur,
            &mut || {
                let _ = upstream::control(ctl, "reset");
                snap = (
                    upstream::UpStats::default(),
                    procstat::cpu_secs(&pids),
                    procstat::cpu_secs(&[upstream_pid]),
                );
            },
            &mut || {
                end = (
                    upstream::stats(ctl).unwrap_or_default(),
                    procstat::cpu_secs(&pids),
                    procstat::cpu_secs(&[upstream_pid]),
                );
            },
        );
        errors += o.errors;
        if first_error.is_none() {
            first_error = o.first_error.clone();
        }
        let hs = end.0.full + end.0.resumed;
        // A proxy must forward each request exactly once.
        if end.0.requests + (c as u64) < o.samples.len() as u64 {
            errors += 1;
            first_error.get_or_insert_with(|| {
                format!(
                    "upstream saw {} requests, client completed {}",
                    end.0.requests,
                    o.samples.len()
                )
            });
        }
        if end.0.bad_auth > 0 {
            errors += end.0.bad_auth;
            first_error.get_or_insert_with(|| "upstream saw a wrong credential".into());
        }
        eprintln!(
            "bench:   c={c:<3} {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  handshakes {hs} ({} full)  errors {}  proxy CPU {:.0}%  upstream CPU {:.0}%",
            o.rps(),
            o.pct(50.0) / 1e6,
            o.pct(99.0) / 1e6,
            end.0.full,
            o.errors,
            100.0 * (end.1 - snap.1) / o.secs,
            100.0 * (end.2 - snap.2) / o.secs
        );
        cells.push(Cell {
            conc: c,
            n: o.samples.len() as u64,
            secs: o.secs,
            rps: o.rps(),
            p50_ms: o.pct(50.0) / 1e6,
            p99_ms: o.pct(99.0) / 1e6,
            handshakes: hs,
            proxy_cpu: end.1 - snap.1,
            upstream_cpu: end.2 - snap.2,
        });
    }

    let sse_req = Arc::new(load::build_request(
        &format!(
            "/v1/messages?beta=true&pace={}&events={}",
            plan.pace_ms, plan.sse_events
        ),
        &running.client_auth,
        2048,
    ));
    let sse = load::sse(
        target.clone(),
        sse_req,
        plan.sse_conc,
        plan.sse_rounds,
        plan.sse_events,
        &mut || {},
    );
    errors += sse.errors;
    first_error = first_error.or(sse.first_error.clone());
    eprintln!(
        "bench:   SSE relay p50 {:.3} ms p99 {:.3} ms over {} events",
        sse.pct(50.0) / 1e6,
        sse.pct(99.0) / 1e6,
        sse.samples.len()
    );

    // Issue 11's figure: a few concurrent streams of events far apart, the shape of claude's
    // own streams (the relay delay is the proxy's wake-up and forwarding cost per event).
    let relay_req = Arc::new(load::build_request(
        &format!(
            "/v1/messages?beta=true&pace={}&events={}",
            plan.relay_pace_ms, plan.relay_events
        ),
        &running.client_auth,
        2048,
    ));
    let relay = load::sse(
        target.clone(),
        relay_req,
        plan.relay_streams,
        plan.relay_rounds,
        plan.relay_events,
        &mut || {},
    );
    errors += relay.errors;
    first_error = first_error.or(relay.first_error.clone());
    eprintln!(
        "bench:   relay ({} streams x {} events {} ms apart) p50 {:.3} ms p99 {:.3} ms over {} events",
        plan.relay_streams,
        plan.relay_events,
        plan.relay_pace_ms,
        relay.pct(50.0) / 1e6,
        relay.pct(99.0) / 1e6,
        relay.samples.len()
    );

    let mem_req = Arc::new(load::build_request(
        &format!(
            "/v1/messages?beta=true&pace={}&events={}",
            plan.pace_ms, plan.mem_events
        ),
        &running.client_auth,
        2048,
    ));
    let mut peak = 0u64;
    let pids = running.pids();
    let mem = load::sse(
        target.clone(),
        mem_req,
        plan.mem_streams,
        1,
        plan.mem_events,
        &mut || {
            peak = peak.max(procstat::rss_sum_kib(&pids));
        },
    );
    errors += mem.errors;
    first_error = first_error.or(mem.first_error.clone());
    eprintln!(
        "bench:   {} streams: peak RSS {} KiB, relay p99 {:.3} ms",
        plan.mem_streams,
        peak,
        mem.pct(99.0) / 1e6
    );
    running.stop();

    Ok(SysResult {
        name: kind.name().to_string(),
        failed: None,
        has_process: running.listen.is_some(),
        idle_rss_kib: idle_rss,
        cells,
        sse: summary(&sse),
        relay: summary(&relay),
        mem_sse: summary(&mem),
        peak_rss_kib: peak,
        errors,
        first_error,
    })
}

fn summary(o: &Outcome) -> SseSummary {
    SseSummary {
        p50_ms: o.pct(50.0) / 1e6,
        p99_ms: o.pct(99.0) / 1e6,
    }
}
