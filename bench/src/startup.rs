//! Init start-up: the time from spawning the init to its child's first instruction, for
//! bottle-init and tini with the same child (this binary's `stamp` subcommand, which writes
//! CLOCK_MONOTONIC into a file and exits), and with no init at all as the floor.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::clock::mono_ns;
use crate::load::percentile;

pub struct StartupResult {
    pub runs: usize,
    /// Median and p90 spawn-to-child-exec (ns) for: no init, tini, bottle-init.
    pub bare: (f64, f64),
    pub tini: (f64, f64),
    pub bottle: Option<(f64, f64)>,
    /// Median spawn-to-exit of the whole init (ns).
    pub tini_total: f64,
    pub bottle_total: Option<f64>,
}

enum Init<'a> {
    Bare,
    Tini,
    Bottle {
        bin: &'a Path,
        upstream_port: u16,
        ca: &'a Path,
    },
}

fn once(init: &Init, stamp_bin: &Path, out: &Path) -> Result<(u64, u64), String> {
    let _ = fs::remove_file(out);
    let mut cmd = match init {
        Init::Bare => Command::new(stamp_bin),
        Init::Tini => {
            let mut c = Command::new("tini");
            c.arg("-s").arg("--").arg(stamp_bin);
            c
        }
        Init::Bottle {
            bin,
            upstream_port,
            ca,
        } => {
            let mut c = Command::new(bin);
            c.env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env(
                    "BOTTLE_UPSTREAM",
                    format!("https://localhost:{upstream_port}"),
                )
                .env("BOTTLE_UPSTREAM_CA", ca)
                .env("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-bench-fake-token")
                .env("BOTTLE_LOG", "warn")
                .arg("--")
                .arg(stamp_bin);
            c
        }
    };
    cmd.arg("stamp")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = mono_ns();
    let o = cmd
        .output()
        .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
    let t1 = mono_ns();
    if !o.status.success() {
        return Err(format!(
            "{:?} exited with {}: {}",
            cmd.get_program(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let s = fs::read_to_string(out)
        .map_err(|e| format!("child wrote no stamp ({}): {e}", out.display()))?;
    let t = s
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("bad stamp {s:?}"))?;
    Ok((t.saturating_sub(t0), t1 - t0))
}

pub fn measure(
    dir: &Path,
    runs: usize,
    bottle: Option<(&Path, u16, &Path)>,
) -> Result<StartupResult, String> {
    let d = dir.join("startup");
    fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod: {e}"))?;
    // A copy uid 1000 can execute wherever the build tree lives.
    let stamp_bin = d.join("stamp-child");
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    fs::copy(&me, &stamp_bin).map_err(|e| format!("copying {}: {e}", me.display()))?;
    fs::set_permissions(&stamp_bin, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod: {e}"))?;
    let out = d.join("stamp");

    let inits: Vec<Init> = {
        let mut v = vec![Init::Bare, Init::Tini];
        if let Some((bin, upstream_port, ca)) = bottle {
            v.push(Init::Bottle {
                bin,
                upstream_port,
                ca,
            });
        }
        v
    };
    let mut exec: Vec<Vec<u64>> = vec![Vec::new(); inits.len()];
    let mut total: Vec<Vec<u64>> = vec![Vec::new(); inits.len()];
    // A few unrecorded runs warm the page cache; then interleave so drift hits all alike.
    for init in &inits {
        for _ in 0..5 {
            once(init, &stamp_bin, &out)?;
        }
    }
    for _ in 0..runs {
        for (i, init) in inits.iter().enumerate() {
            let (e, t) = once(init, &stamp_bin, &out)?;
            exec[i].push(e);
            total[i].push(t);
        }
    }
    for v in exec.iter_mut().chain(total.iter_mut()) {
        v.sort_unstable();
    }
    let pair = |v: &[u64]| (percentile(v, 50.0), percentile(v, 90.0));
    Ok(StartupResult {
        runs,
        bare: pair(&exec[0]),
        tini: pair(&exec[1]),
        bottle: bottle.map(|_| pair(&exec[2])),
        tini_total: percentile(&total[1], 50.0),
        bottle_total: bottle.map(|_| percentile(&total[2], 50.0)),
    })
}

/// The `stamp` child: record when it started running, as early as Rust's main allows.
pub fn stamp(path: &str) -> i32 {
    let t = mono_ns();
    match fs::write(path, format!("{t}\n")) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stamp: writing {path}: {e}");
            1
        }
    }
}
