//! Starting and stopping each system under test: nginx, haproxy and bottle-init as proxies
//! in front of the bench upstream, and "direct" (no proxy: the client speaks TLS itself).
//! Configs are generated per run into a temp dir.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::procstat;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    BottleInit,
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::BottleInit => "bottle-init",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

pub struct Env<'a> {
    pub dir: &'a Path,
    pub upstream_port: u16,
    pub ca: &'a Path,
    pub real_token: &'a str,
    pub bottle_init: &'a Path,
    pub nproc: usize,
}

pub struct Running {
    pub kind: Kind,
    child: Option<Child>,
    pub listen: Option<SocketAddr>,
    /// The Authorization value the client sends.
    pub client_auth: String,
}

/// A port free to listen on, below the kernel's ephemeral range: a port the kernel hands out
/// (`bind` to port 0) can be taken by one of the benchmark's own outgoing connections between
/// this call and the peer's bind ("Address already in use" in a full run); one below the range
/// is never handed to an outgoing connection.
pub fn free_port() -> Result<u16, String> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(1024).min(16000);
    if span == 0 {
        return Err(format!(
            "no ports below the ephemeral range (it starts at {low})"
        ));
    }
    // A different start per process and call, so parallel runs rarely probe the same ports.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(NEXT.fetch_add(7919, std::sync::atomic::Ordering::Relaxed));
    for k in 0..u32::from(span) {
        let port = low - 1 - ((seed.wrapping_add(k) % u32::from(span)) as u16);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!(
        "finding a free port: every port from {} to {} is in use",
        low - span,
        low - 1
    ))
}

fn wait_listening(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
    log: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "{what} exited with {st} before listening; log:\n{}",
                tail(log)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "{what} did not listen on {addr} within 10 s; log:\n{}",
        tail(log)
    ))
}

pub fn tail(p: &Path) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child, String> {
    let f = fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let f2 = f.try_clone().map_err(|e| format!("dup log: {e}"))?;
    cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
    cmd.spawn()
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))
}

pub fn start(kind: Kind, env: &Env) -> Result<Running, String> {
    let dir = env.dir.join(kind.name());
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let real_auth = format!("Bearer {}", env.real_token);
    match kind {
        Kind::Direct => Ok(Running {
            kind,
            child: None,
            listen: None,
            client_auth: real_auth,
        }),
        Kind::Nginx => {
            let port = free_port()?;
            let conf = dir.join("nginx.conf");
            fs::write(&conf, nginx_conf(&dir, port, env, &real_auth))
                .map_err(|e| format!("writing nginx.conf: {e}"))?;
            let log = dir.join("nginx.log");
            let mut cmd = Command::new("nginx");
            cmd.arg("-p").arg(&dir).arg("-c").arg(&conf);
            let mut child = spawn_logged(cmd, &log)?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            wait_listening(addr, &mut child, "nginx", &log)?;
            Ok(Running {
                kind,
                child: Some(child),
                listen: Some(addr),
                client_auth: real_auth_dummy(),
            })
        }
        Kind::Haproxy => {
            let port = free_port()?;
            let conf = dir.join("haproxy.cfg");
            fs::write(&conf, haproxy_conf(port, env, &real_auth))
                .map_err(|e| format!("writing haproxy.cfg: {e}"))?;
            let log = dir.join("haproxy.log");
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(&conf);
            let mut child = spawn_logged(cmd, &log)?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            wait_listening(addr, &mut child, "haproxy", &log)?;
            Ok(Running {
                kind,
                child: Some(child),
                listen: Some(addr),
                client_auth: real_auth_dummy(),
            })
        }
        Kind::BottleInit => start_bottle_init(kind, &dir, env),
    }
}

/// nginx and haproxy replace whatever Authorization the client sends; the client sends a
/// placeholder so that a proxy that failed to inject would be caught by the upstream (401).
fn real_auth_dummy() -> String {
    "Bearer placeholder-not-the-real-token".to_string()
}

fn start_bottle_init(kind: Kind, dir: &Path, env: &Env) -> Result<Running, String> {
    // The child runs as uid 1000 and must be able to write its report here.
    let info_dir = dir.join("info");
    fs::create_dir_all(&info_dir).map_err(|e| format!("creating {}: {e}", info_dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod: {e}"))?;
    fs::set_permissions(&info_dir, fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod: {e}"))?;
    let info = info_dir.join("info");
    let _ = fs::remove_file(&info);
    let log = dir.join("bottle-init.log");
    let mut cmd = Command::new(env.bottle_init);
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("BOTTLE_UPSTREAM", format!("https://localhost:{}", env.upstream_port))
        .env("BOTTLE_UPSTREAM_CA", env.ca)
        .env("CLAUDE_CODE_OAUTH_TOKEN", env.real_token)
        // Request logging off, as for nginx (access_log off) and haproxy (no log).
        .env("BOTTLE_LOG", "warn")
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "echo \"$ANTHROPIC_BASE_URL $CLAUDE_CODE_OAUTH_TOKEN\" > {}.tmp && mv {}.tmp {}; exec sleep 100000",
            info.display(),
            info.display(),
            info.display()
        ));
    let mut child = spawn_logged(cmd, &log)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Ok(s) = fs::read_to_string(&info)
            && !s.trim().is_empty()
        {
            break s;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "bottle-init exited with {st} before its child reported; log:\n{}",
                tail(&log)
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "bottle-init's child did not report within 10 s; log:\n{}",
                tail(&log)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut parts = line.split_whitespace();
    let (Some(url), Some(secret)) = (parts.next(), parts.next()) else {
        return Err("bottle-init's child reported no ANTHROPIC_BASE_URL/secret".into());
    };
    if secret == env.real_token {
        return Err("bottle-init gave its child the real token".into());
    }
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| format!("bottle-init's ANTHROPIC_BASE_URL {url:?} is not http://IP:PORT"))?;
    wait_listening(addr, &mut child, "bottle-init", &log)?;
    Ok(Running {
        kind,
        child: Some(child),
        listen: Some(addr),
        client_auth: format!("Bearer {secret}"),
    })
}

impl Running {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The processes whose memory and CPU count as this proxy's.
    pub fn pids(&self) -> Vec<i32> {
        match (self.kind, self.pid()) {
            (_, None) => vec![],
            // The proxy is a thread of bottle-init; its child (sleep) is not the proxy.
            (Kind::BottleInit, Some(p)) => vec![p],
            (_, Some(p)) => procstat::tree(p),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill() has no memory effects; the pid is our own unreaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nginx_conf(dir: &Path, port: u16, env: &Env, real_auth: &str) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
user root;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    client_max_body_size 0;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    upstream api {{
        server 127.0.0.1:{up};
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass https://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host localhost;
            proxy_set_header Authorization "{real_auth}";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"#,
        up = env.upstream_port,
        ca = env.ca.display()
    )
}

fn haproxy_conf(port: u16, env: &Env, real_auth: &str) -> String {
    format!(
        r#"global
    nbthread {n}
    maxconn 4096
    ssl-server-verify required

defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    option http-keep-alive
    no option http-buffer-request
    # Without it haproxy sends with MSG_MORE and SSE events wait up to 200 ms.
    option http-no-delay
    http-reuse always

frontend fe
    bind 127.0.0.1:{port} backlog 4096
    default_backend api

backend api
    http-request set-header Authorization "{real_auth}"
    http-request set-header Host localhost
    server up 127.0.0.1:{up} ssl verify required ca-file {ca} sni str(localhost) verifyhost localhost alpn http/1.1 pool-purge-delay 600s maxconn 4096
"#,
        n = env.nproc,
        up = env.upstream_port,
        ca = env.ca.display()
    )
}
