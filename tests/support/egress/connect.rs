//! A minimal CONNECT proxy built from the product's policy functions, to test their
//! composition end to end in the lab: `decide_connect` on the request-target, a lookup at this
//! connection (through the lab's DNS), `filter_addrs`, connect to a checked address only, then
//! relay bytes both ways. It logs every decision. It is a stand-in for the real proxy's CONNECT
//! support, not a copy of it: blocking, one thread per direction.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bottle_init::egress::mode::AllowList;
use bottle_init::egress::policy::{TargetHost, decide_connect};
use bottle_init::egress::resolve::filter_addrs;

use super::{Netns, RawAddr, errno, lab_resolve};

pub struct ConnectProxy {
    pub log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ConnectProxy {
    /// Listen on `addr` inside `ns` (as root, like PID 1's proxy thread).
    pub fn start(ns: &Netns, addr: SocketAddr, allow: AllowList) -> ConnectProxy {
        let listener = ns.run_in(move || TcpListener::bind(addr).expect("bind proxy"));
        listener.set_nonblocking(true).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let allow = Arc::new(allow);
        // Connection threads must be in the client namespace to dial out and to query the
        // lab DNS: spawn the accept loop from a thread that joined it.
        let fd = ns.file_clone();
        let thread = std::thread::spawn(move || {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (allow, log) = (allow.clone(), log2.clone());
                        std::thread::spawn(move || serve(c, &allow, &log));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ConnectProxy {
            log,
            stop,
            thread: Some(thread),
        }
    }
}

fn serve(mut c: TcpStream, allow: &AllowList, log: &Mutex<Vec<String>>) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let head = crate::support::read_head(&mut c, 4096);
    if !head.ends_with(b"\r\n\r\n") {
        return;
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = c.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let refuse = |c: &mut TcpStream, why: String| {
        log.lock().unwrap().push(format!("deny {target}: {why}"));
        let _ = c.write_all(
            format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n{why}",
                why.len()
            )
            .as_bytes(),
        );
    };
    let grant = match decide_connect(target, allow) {
        Ok(g) => g,
        Err(d) => return refuse(&mut c, d.to_string()),
    };
    let ips = match &grant.host {
        TargetHost::Ip(ip) => vec![*ip],
        TargetHost::Name(n) => lab_resolve(n).unwrap_or_default(),
    };
    let addrs = ips.into_iter().map(|ip| SocketAddr::new(ip, grant.port));
    let resolved = match filter_addrs(&grant, addrs) {
        Ok(r) => r,
        Err(e) => return refuse(&mut c, e.to_string()),
    };
    let Some(up) = resolved
        .allowed
        .iter()
        .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(3)).ok())
    else {
        return refuse(&mut c, "upstream unreachable".into());
    };
    log.lock()
        .unwrap()
        .push(format!("allow {target} -> {}", up.peer_addr().unwrap()));
    if c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut up2);
        let _ = up2.shutdown(Shutdown::Write);
    });
    let mut up = up;
    let _ = std::io::copy(&mut up, &mut c);
    let _ = c.shutdown(Shutdown::Write);
    let _ = t.join();
}

/// In the forked child: CONNECT through the proxy with a prepared request, then send
/// `payload` and expect it back unchanged. 0 = tunnel worked; -403 = refused; errno or other
/// negatives otherwise. No allocation.
pub fn connect_probe(proxy: &RawAddr, request: &[u8], payload: &[u8]) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(proxy.family, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return errno();
    }
    let r = connect_probe_fd(fd, proxy, request, payload);
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    r
}

fn connect_probe_fd(fd: i32, proxy: &RawAddr, request: &[u8], payload: &[u8]) -> i32 {
    crate::support::set_fd_timeout(fd, libc::SO_RCVTIMEO, Duration::from_secs(5));
    // SAFETY: the address is live and its length right.
    if unsafe { libc::connect(fd, proxy.ptr(), proxy.len) } != 0 {
        return errno();
    }
    if !send_all(fd, request) {
        return errno();
    }
    // Read the response head byte by byte so no tunnel bytes are consumed with it.
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() && !(n >= 4 && head[n - 4..n] == *b"\r\n\r\n") {
        // SAFETY: reading one byte into the live buffer.
        let r = unsafe { libc::read(fd, head[n..].as_mut_ptr().cast(), 1) };
        if r != 1 {
            return -2;
        }
        n += 1;
    }
    if head.starts_with(b"HTTP/1.1 403") {
        return -403;
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return -4;
    }
    if !send_all(fd, payload) {
        return errno();
    }
    let mut back = [0u8; 1024];
    let mut got = 0;
    while got < payload.len() {
        // SAFETY: reading into the live buffer within its bounds.
        let r = unsafe { libc::read(fd, back[got..].as_mut_ptr().cast(), back.len() - got) };
        if r <= 0 {
            return -5;
        }
        got += r as usize;
    }
    if back[..got] == *payload { 0 } else { -6 }
}

fn send_all(fd: i32, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: writing from a live buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            return false;
        }
        data = &data[n as usize..];
    }
    true
}
