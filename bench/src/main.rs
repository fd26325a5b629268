//! bottle-bench: the harness behind `scripts/bench` (issue 6).
//!
//! Subcommands:
//! - `run [--quick|--focus] [--bottle-init PATH|standin] [--static-binary PATH] [--results DIR]
//!   [--only direct,bottle-init,nginx,haproxy,startup] [--label TEXT]`: the whole benchmark.
//! - `upstream ...`: the TLS upstream (started by `run` as a separate process).
//! - `stamp FILE`: the start-up child (writes CLOCK_MONOTONIC ns to FILE).
//! - `standin -- CMD...`: a naive stand-in with bottle-init's interface, for harness tests.

mod certs;
mod clock;
mod http1;
mod load;
mod peers;
mod procstat;
mod report;
mod run;
mod standin;
mod startup;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use peers::Kind;

fn usage() -> ExitCode {
    eprintln!(
        "usage: bottle-bench run [--quick|--focus] [--bottle-init PATH|standin] [--static-binary PATH] [--results DIR] [--only direct,bottle-init,nginx,haproxy,startup] [--label TEXT]\n       bottle-bench upstream --listen ADDR... --control ADDR --cert PEM --key PEM --expect-auth VALUE\n       bottle-bench stamp FILE\n       bottle-bench standin -- CMD [ARGS...]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("stamp") => match args.get(2) {
            Some(p) => ExitCode::from(startup::stamp(p) as u8),
            None => usage(),
        },
        Some("upstream") => cmd_upstream(&args[2..]),
        Some("standin") => match standin::run(&args[2..]) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Some("run") => cmd_run(&args[2..]),
        _ => usage(),
    }
}

fn cmd_upstream(args: &[String]) -> ExitCode {
    let mut listen = Vec::new();
    let (mut control, mut cert, mut key, mut expect) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().cloned();
        match a.as_str() {
            "--listen" => listen.extend(v),
            "--control" => control = v,
            "--cert" => cert = v.map(PathBuf::from),
            "--key" => key = v.map(PathBuf::from),
            "--expect-auth" => expect = v,
            _ => return usage(),
        }
    }
    let (Some(control), Some(cert), Some(key), Some(expect_auth)) = (control, cert, key, expect)
    else {
        return usage();
    };
    match upstream::run(upstream::Options {
        listen,
        control,
        cert: &cert,
        key: &key,
        expect_auth,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upstream: {e}");
            ExitCode::from(1)
        }
    }
}

fn cmd_run(args: &[String]) -> ExitCode {
    let mut cfg = run::Config {
        quick: false,
        focus: false,
        bottle_init: None,
        static_binary: None,
        results: PathBuf::from("bench/results"),
        systems: vec![Kind::Direct, Kind::BottleInit, Kind::Nginx, Kind::Haproxy],
        label: None,
        startup: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => cfg.quick = true,
            "--focus" => {
                cfg.focus = true;
                cfg.startup = false;
            }
            "--bottle-init" | "--static-binary" | "--results" | "--only" | "--label" => {
                let Some(v) = it.next() else { return usage() };
                match a.as_str() {
                    "--bottle-init" if v == "standin" => {
                        // The stand-in is this binary; a wrapper script gives it the interface.
                        match standin_wrapper() {
                            Ok(p) => cfg.bottle_init = Some(p),
                            Err(e) => {
                                eprintln!("bench: {e}");
                                return ExitCode::from(1);
                            }
                        }
                    }
                    "--bottle-init" => cfg.bottle_init = Some(PathBuf::from(v)),
                    "--static-binary" => cfg.static_binary = Some(PathBuf::from(v)),
                    "--results" => cfg.results = PathBuf::from(v),
                    "--label" => cfg.label = Some(v.clone()),
                    _ => {
                        let mut sys = Vec::new();
                        cfg.startup = false;
                        for n in v.split(',') {
                            if n == "startup" {
                                cfg.startup = true;
                                continue;
                            }
                            match [Kind::Direct, Kind::BottleInit, Kind::Nginx, Kind::Haproxy]
                                .into_iter()
                                .find(|k| k.name() == n)
                            {
                                Some(k) => sys.push(k),
                                None => return usage(),
                            }
                        }
                        cfg.systems = sys;
                    }
                }
            }
            _ => return usage(),
        }
    }
    match run::run(cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench: harness failure (see above); numbers may be incomplete");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn standin_wrapper() -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let p = std::env::temp_dir().join(format!("bottle-bench-standin-{}", std::process::id()));
    std::fs::write(
        &p,
        format!("#!/bin/sh\nexec '{}' standin \"$@\"\n", me.display()),
    )
    .map_err(|e| format!("writing {}: {e}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod: {e}"))?;
    Ok(p)
}
