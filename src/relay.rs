//! `bottle-init exec`'s supervisor: the root process that stays behind when the command runs.
//!
//! Why it exists: a command exec'd in place on the caller's terminal (a root shell from
//! `docker exec -it C bash`, whose environment holds the real token) shares that terminal
//! with root. A uid-1000 command can then push keystrokes into it with TIOCSTI, which root's
//! shell runs when the command exits, and a leftover background process can take the
//! terminal's foreground (tcsetpgrp) and read what root types next. So, like `su --pty` and
//! sudo's `use_pty`:
//! - on a terminal (any of fds 0-2 a tty), the command gets its own session whose
//!   controlling terminal is a NEW pty ([`Pty::open`]; the slave replaces each standard fd
//!   that was a terminal), and this process relays bytes between the caller's terminal (in
//!   raw mode while relaying, restored on every exit path) and the pty master, window size
//!   included (SIGWINCH -> TIOCGWINSZ -> TIOCSWINSZ);
//! - without a terminal, the command gets its own session too, and its fds directly;
//! - this process stays root (a uid-1000 process can neither ptrace nor signal it), is not
//!   dumpable, keeps only CAP_KILL (to forward signals to the uid-1000 command), holds no
//!   credential, forwards signals to the command's process group, and exits with the
//!   command's status. When the command exits it stops relaying: a leftover process keeps
//!   only a pty that is hung up once this process exits, never the caller's terminal.

use std::time::{Duration, Instant};

use crate::sys::{self, ChildEnd, Errno, Termios};

/// Which of fds 0, 1, 2 are terminals.
pub fn caller_ttys() -> [bool; 3] {
    [sys::isatty(0), sys::isatty(1), sys::isatty(2)]
}

/// The command's new terminal, seen from the relay.
pub struct Pty {
    pub master: i32,
    /// Closed by the relay once the child has it.
    pub slave: i32,
    /// Which standard fds of the caller are terminals (and become the slave in the child).
    pub fds: [bool; 3],
}

impl Pty {
    /// A new pty for the command when any of the caller's fds 0-2 is a terminal: same
    /// settings and window size as the caller's terminal, the slave owned by the command's
    /// user (programs that reopen their tty by name, e.g. ssh's password prompt, expect that).
    pub fn open(fds: [bool; 3], uid: u32, gid: u32) -> Result<Option<Pty>, Errno> {
        let Some(model) = fds.iter().position(|t| *t) else {
            return Ok(None);
        };
        let (master, slave) = sys::open_pty()?;
        let pty = Pty { master, slave, fds };
        if let Ok(t) = sys::tcgetattr(model as i32) {
            let _ = sys::tcsetattr(slave, &t);
        }
        if let Ok(ws) = sys::get_winsize(model as i32) {
            let _ = sys::set_winsize(master, &ws);
        }
        sys::fchown(slave, uid, gid)?;
        sys::fchmod(slave, 0o600)?;
        sys::set_nonblocking(master)?;
        Ok(Some(pty))
    }

    /// The caller's terminal fd the window size is read from.
    fn model(&self) -> i32 {
        self.fds.iter().position(|t| *t).unwrap_or(0) as i32
    }

    /// Where the command's terminal output goes: the caller's stdout if it is a terminal,
    /// else its stderr, else the terminal on stdin (echo of what is typed).
    fn out(&self) -> i32 {
        match self.fds {
            [_, true, _] => 1,
            [_, _, true] => 2,
            _ => 0,
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        sys::close(self.master);
        if self.slave >= 0 {
            sys::close(self.slave);
        }
    }
}

/// The caller's terminal in raw mode; the saved settings are restored on drop (every return
/// path, unwinding included).
struct RawMode {
    fd: i32,
    saved: Termios,
}

impl RawMode {
    /// Only when we are the terminal's foreground (`bottle-init exec ... &` from a shell must
    /// not put the shell's terminal in raw mode behind its back).
    fn enter(fd: i32) -> Option<RawMode> {
        if sys::tcgetpgrp(fd).ok()? != sys::getpgid(0).ok()? {
            return None;
        }
        let saved = sys::tcgetattr(fd).ok()?;
        sys::tcsetattr(fd, &sys::raw_mode(&saved)).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = sys::tcsetattr(self.fd, &self.saved);
    }
}

/// Signals not forwarded to the command: SIGCHLD is ours; SIGTTIN/SIGTTOU would stop it for
/// our own terminal trouble; SIGWINCH on a pty is answered by resizing it (the kernel then
/// signals the command's foreground group itself).
fn forwarded(sig: i32, pty: bool) -> bool {
    crate::init::forwardable(sig) && !(pty && sig == libc::SIGWINCH)
}

/// Bytes read from the caller at a time, and the most buffered for the pty.
const CHUNK: usize = 16 * 1024;
/// After the command exits, how long its last output may take to come out of the pty.
const DRAIN_QUIET: Duration = Duration::from_millis(50);
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// Relays until the command (`child`, its session and group leader) exits; returns how it
/// ended. `sigfd` is a signalfd for all signals (all blocked in this process).
pub fn supervise(child: i32, sigfd: i32, pty: Option<Pty>) -> ChildEnd {
    let _raw = match &pty {
        Some(p) if p.fds[0] => RawMode::enter(0),
        _ => None,
    };
    let is_pty = pty.is_some();
    let mut input_open = pty.as_ref().is_some_and(|p| p.fds[0]);
    let mut master_open = is_pty;
    let mut inbuf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut buf = vec![0u8; CHUNK];
    let end = loop {
        if let Some(end) = reap(child) {
            break end;
        }
        let mut fds = vec![pollfd(sigfd, libc::POLLIN)];
        let (mut i_in, mut i_master) = (None, None);
        if let Some(p) = &pty {
            if input_open && inbuf.len() < CHUNK {
                i_in = Some(fds.len());
                fds.push(pollfd(0, libc::POLLIN));
            }
            if master_open {
                let ev = libc::POLLIN | if inbuf.is_empty() { 0 } else { libc::POLLOUT };
                i_master = Some(fds.len());
                fds.push(pollfd(p.master, ev));
            }
        }
        // The timeout is a safety net for reaping only.
        if sys::poll(&mut fds, Some(Duration::from_secs(1))).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        while let Ok(Some(sig)) = sys::read_signalfd(sigfd) {
            match sig {
                libc::SIGWINCH if is_pty => {
                    if let Some(p) = &pty
                        && let Ok(ws) = sys::get_winsize(p.model())
                    {
                        let _ = sys::set_winsize(p.master, &ws);
                    }
                }
                s if forwarded(s, is_pty) => {
                    // The command leads its session and group: its jobs get the signal too.
                    let _ = sys::kill(-child, s).or_else(|_| sys::kill(child, s));
                }
                _ => {}
            }
        }
        let Some(p) = &pty else { continue };
        if let Some(i) = i_in
            && fds[i].revents != 0
        {
            let room = CHUNK - inbuf.len();
            match sys::read(0, &mut buf[..room]) {
                Ok(0) | Err(_) => input_open = false, // hung up: nothing more to relay
                Ok(n) => inbuf.extend_from_slice(&buf[..n]),
            }
        }
        if let Some(i) = i_master {
            let rev = fds[i].revents;
            if rev & libc::POLLOUT != 0 && !inbuf.is_empty() {
                match sys::write(p.master, &inbuf) {
                    Ok(n) => {
                        inbuf.drain(..n);
                    }
                    Err(Errno(libc::EAGAIN)) => {}
                    Err(_) => master_open = false,
                }
            }
            if rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                master_open = relay_output(p, &mut buf);
            }
        }
    };
    if let Some(p) = &pty
        && master_open
    {
        drain(p, &mut buf);
    }
    end
}

/// One read from the master to the caller; false once the pty has no writer left (EIO).
fn relay_output(p: &Pty, buf: &mut [u8]) -> bool {
    match sys::read(p.master, buf) {
        Ok(0) => false,
        Ok(n) => {
            let _ = sys::write_all(p.out(), &buf[..n]);
            true
        }
        Err(Errno(libc::EAGAIN)) => true,
        Err(_) => false,
    }
}

/// The command has exited: copy what it wrote last (pty data reaches the master a moment
/// later), until the pty is quiet or hung up, bounded in case a leftover keeps writing.
fn drain(p: &Pty, buf: &mut [u8]) {
    let start = Instant::now();
    while start.elapsed() < DRAIN_MAX {
        let mut fds = [pollfd(p.master, libc::POLLIN)];
        match sys::poll(&mut fds, Some(DRAIN_QUIET)) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !relay_output(p, buf) {
                    return;
                }
            }
        }
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Reaps our children (only the command; its orphans go to PID 1); the command's end once
/// it has one.
fn reap(child: i32) -> Option<ChildEnd> {
    loop {
        match sys::waitpid_nohang(-1) {
            Ok(Some((pid, end))) if pid == child => return Some(end),
            Ok(Some(_)) => {}
            Ok(None) => return None,
            // No child at all: it was reaped elsewhere; cannot happen, do not spin.
            Err(Errno(libc::ECHILD)) => return Some(ChildEnd::Exited(1)),
            Err(Errno(libc::EINTR)) => {}
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_to_the_first_terminal_among_stdout_stderr_stdin() {
        let p = |fds| Pty {
            master: -1,
            slave: -1,
            fds,
        };
        let out = |fds| {
            let x = p(fds);
            let o = x.out();
            std::mem::forget(x);
            o
        };
        assert_eq!(out([true, true, true]), 1);
        assert_eq!(out([true, false, true]), 2);
        assert_eq!(out([true, false, false]), 0);
        assert_eq!(out([false, true, false]), 1);
    }

    #[test]
    fn winch_is_resized_not_forwarded_on_a_pty() {
        assert!(!forwarded(libc::SIGWINCH, true));
        assert!(forwarded(libc::SIGWINCH, false));
        for s in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGUSR1] {
            assert!(forwarded(s, true) && forwarded(s, false), "{s}");
        }
        for s in [libc::SIGCHLD, libc::SIGTTIN, libc::SIGTTOU] {
            assert!(!forwarded(s, true) && !forwarded(s, false), "{s}");
        }
    }
}
