//! A stand-in for bottle-init, used only to develop and self-test the harness while the real
//! proxy is not on main (`scripts/bench --bottle-init standin`). Same interface as
//! bottle-init for the harness: reads BOTTLE_UPSTREAM, BOTTLE_UPSTREAM_CA and
//! CLAUDE_CODE_OAUTH_TOKEN, runs `-- CMD...` as uid 1000 with ANTHROPIC_BASE_URL and a random
//! session secret, and proxies with a naive design (thread per client connection, one
//! upstream TLS connection per client connection). Its numbers say nothing about bottle-init.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::thread;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::http1::{BufConn, header, invalid, parse_response, request_framing};

pub fn run(args: &[String]) -> Result<i32, String> {
    let upstream =
        std::env::var("BOTTLE_UPSTREAM").map_err(|_| "standin: BOTTLE_UPSTREAM unset")?;
    let ca =
        std::env::var("BOTTLE_UPSTREAM_CA").map_err(|_| "standin: BOTTLE_UPSTREAM_CA unset")?;
    let token = std::env::var("CLAUDE_CODE_OAUTH_TOKEN").map_err(|_| "standin: no token")?;
    let hostport = upstream
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or(hostport.clone());
    let target =
        match crate::load::Target::tls("127.0.0.1:1".parse().expect("literal"), ca.as_ref())? {
            crate::load::Target::Tls { cfg, .. } => cfg,
            crate::load::Target::Plain(_) => unreachable!(),
        };
    let mut secret = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(|e| format!("standin: urandom: {e}"))?;
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("standin: bind: {e}"))?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();

    let cmd = args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .collect::<Vec<_>>();
    let Some((prog, rest)) = cmd.split_first() else {
        return Err("standin: no command".into());
    };
    let mut c = Command::new(prog);
    c.args(rest)
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("CLAUDE_CODE_OAUTH_TOKEN", &secret)
        .uid(1000)
        .gid(1000);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it makes the child die with us.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    };
    let mut child = c.spawn().map_err(|e| format!("standin: spawn: {e}"))?;

    let expect = Arc::new(format!("Bearer {secret}").into_bytes());
    let real = Arc::new(format!("Bearer {token}"));
    let (host, hostport) = (Arc::new(host), Arc::new(hostport));
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (cfg, expect, real, host, hostport) = (
                target.clone(),
                expect.clone(),
                real.clone(),
                host.clone(),
                hostport.clone(),
            );
            thread::spawn(move || {
                let _ = serve(s, &cfg, &expect, &real, &host, &hostport);
            });
        }
    });
    let st = child.wait().map_err(|e| format!("standin: wait: {e}"))?;
    Ok(st.code().unwrap_or(1))
}

type Up = BufConn<StreamOwned<ClientConnection, TcpStream>>;

fn serve(
    s: TcpStream,
    cfg: &Arc<ClientConfig>,
    expect: &[u8],
    real: &str,
    host: &str,
    hostport: &str,
) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut client = BufConn::new(s);
    let mut up: Option<Up> = None;
    while let Some(head) = client.read_head()? {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            return Err(invalid("bad head"));
        }
        let framing = request_framing(req.headers)?;
        if header(req.headers, "authorization") != Some(expect) {
            client.read_body(framing, false, &mut |_, _| Ok(()))?;
            client
                .s
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        let mut out = format!(
            "{} {} HTTP/1.1\r\n",
            req.method.unwrap_or("GET"),
            req.path.unwrap_or("/")
        )
        .into_bytes();
        for h in req.headers.iter() {
            if ["authorization", "host", "connection", "keep-alive"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
            {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!("Host: {hostport}\r\nAuthorization: {real}\r\n\r\n").as_bytes(),
        );
        let u = match up.as_mut() {
            Some(u) => u,
            None => {
                let sock = TcpStream::connect(hostport)?;
                sock.set_nodelay(true)?;
                let name = ServerName::try_from(host.to_string()).map_err(io::Error::other)?;
                let conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
                up.insert(BufConn::new(StreamOwned::new(conn, sock)))
            }
        };
        u.s.write_all(&out)?;
        client.read_body(framing, true, &mut |d, _| u.s.write_all(d))?;
        u.s.flush()?;
        let rhead = u.read_head()?.ok_or_else(|| invalid("upstream closed"))?;
        let r = parse_response(&rhead)?;
        client.s.write_all(&rhead)?;
        u.read_body(r.framing, true, &mut |d, _| client.s.write_all(d))?;
        if r.close {
            up = None;
        }
    }
    Ok(())
}
