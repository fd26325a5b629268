//! Every raw system call of the crate: signal masks, prctl, capabilities, ids, fds,
//! fork/exec, waitpid, sessions and terminals (pty, termios, window size), signalfd and poll
//! for `exec`'s relay, extended attributes (ACLs), mlock and getrandom (secrets), the fd
//! limit, seccomp, socket options, and `check`'s probes (ptrace, process_vm_readv, socket).
//! `libc` is the only crate underneath; [`Errno`] is the one error type for a failed call.
//!
//! `unsafe` is denied in the rest of the crate (lib.rs), with exactly two exceptions, each
//! because its safety condition is one this module cannot check:
//! - `scrub`: it overwrites credential values in the environment block the kernel placed on
//!   the stack at execve. That is process memory, not a system call, and walking it is only
//!   sound while the process is single-threaded (the first thing `main` does);
//! - `child::spawn` calls [`fork`], an `unsafe fn`: the forked child may only make
//!   async-signal-safe calls until `execve`, which only the caller can keep.
//!
//! Invariants:
//! - functions marked "async-signal-safe" make exactly one or a few raw system calls, never
//!   allocate and never take locks, so the child may call them between `fork` and `execve`;
//! - id and capability changes use raw syscalls, which act on the calling THREAD. Callers use
//!   them only while the process has a single thread (before the proxy thread exists, in the
//!   forked child, or in `bottle-init exec`).
//! - every wrapper returns `Result<_, Errno>`; policy (what to do about an error) is elsewhere.

use std::ffi::CStr;
use std::time::Duration;

/// An `errno` value: the crate's one error type for a failed system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    pub fn to_io(self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.0)
    }

    /// The symbolic name (`ENOSYS`) for the values messages name; `errno N` otherwise.
    pub fn name(self) -> String {
        let known = [
            (libc::EPERM, "EPERM"),
            (libc::ENOENT, "ENOENT"),
            (libc::ESRCH, "ESRCH"),
            (libc::EINTR, "EINTR"),
            (libc::EIO, "EIO"),
            (libc::ENOEXEC, "ENOEXEC"),
            (libc::EBADF, "EBADF"),
            (libc::ECHILD, "ECHILD"),
            (libc::EAGAIN, "EAGAIN"),
            (libc::ENOMEM, "ENOMEM"),
            (libc::EACCES, "EACCES"),
            (libc::EFAULT, "EFAULT"),
            (libc::EBUSY, "EBUSY"),
            (libc::EEXIST, "EEXIST"),
            (libc::ENOTDIR, "ENOTDIR"),
            (libc::EINVAL, "EINVAL"),
            (libc::EMFILE, "EMFILE"),
            (libc::ENOTTY, "ENOTTY"),
            (libc::ENOSPC, "ENOSPC"),
            (libc::ERANGE, "ERANGE"),
            (libc::ENOSYS, "ENOSYS"),
            (libc::ELOOP, "ELOOP"),
            (libc::ENODATA, "ENODATA"),
            (libc::EOPNOTSUPP, "EOPNOTSUPP"),
            (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
            (libc::ENETUNREACH, "ENETUNREACH"),
            (libc::ETIMEDOUT, "ETIMEDOUT"),
            (libc::ECONNREFUSED, "ECONNREFUSED"),
            (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        ];
        known
            .iter()
            .find(|(n, _)| *n == self.0)
            .map_or_else(|| format!("errno {}", self.0), |(_, s)| s.to_string())
    }

    /// The system's description (`Function not implemented`), without std's
    /// ` (os error N)` suffix.
    pub fn desc(self) -> String {
        let full = self.to_io().to_string();
        let suffix = format!(" (os error {})", self.0);
        full.strip_suffix(&suffix).unwrap_or(&full).to_string()
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_io())
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> std::io::Error {
        e.to_io()
    }
}

/// Maps a raw `-1`-on-error return to `Result`. Async-signal-safe.
fn check(rc: libc::c_long) -> Result<libc::c_long, Errno> {
    if rc < 0 {
        // SAFETY: reading errno through libc's thread-local accessor; no allocation.
        Err(Errno(unsafe { *libc::__errno_location() }))
    } else {
        Ok(rc)
    }
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

/// A signal set in the kernel's layout (bit N-1 = signal N). We talk to the kernel directly
/// because both glibc and musl silently leave their internal signals (32-34) out of
/// `sigfillset`/`sigprocmask`: such a signal would then be unblocked, and with its default
/// action it would kill bottle-init.
pub type SigMask = u64;

/// Every signal (the kernel ignores SIGKILL and SIGSTOP in a mask).
pub const ALL_SIGNALS: SigMask = !0;
pub const NO_SIGNALS: SigMask = 0;

/// Sets the calling thread's signal mask (raw rt_sigprocmask). Async-signal-safe.
pub fn set_sigmask(mask: SigMask) -> Result<(), Errno> {
    // SAFETY: rt_sigprocmask with a pointer to an 8-byte mask and sigsetsize 8; no old mask.
    check(unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const SigMask,
            std::ptr::null_mut::<SigMask>(),
            8usize,
        )
    })
    .map(drop)
}

/// Blocks every signal in the calling thread; the first thing every thread does. A thread
/// inherits its creator's mask, but glibc unblocks its internal signals (32, 33) in every
/// new thread (musl: 33, 34): a process-directed one (e.g. `kill -33 1`) could then be
/// delivered to that thread and lost instead of being forwarded by the init loop.
pub fn block_signals_in_thread() {
    let _ = set_sigmask(ALL_SIGNALS);
}

/// The kernel's `struct sigaction` (not libc's): handler, flags, restorer, mask.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Restores every catchable signal to its default disposition. Async-signal-safe.
/// Rust's runtime ignores SIGPIPE, and whoever started us may have ignored others; an ignored
/// disposition survives execve, so this matters.
pub fn reset_signal_dispositions() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // Invalid numbers fail with EINVAL, ignored.
        set_disposition(sig, libc::SIG_DFL);
    }
}

/// Sets SIG_IGN for the signals libc reserves for its own thread machinery (32-34), which
/// musl unblocks in every thread when the first thread is created. A stray one sent to the
/// process then lands on a thread with it unblocked; ignored, it cannot kill bottle-init.
/// Safe only because bottle-init never uses pthread_cancel or multi-threaded set*id.
pub fn ignore_libc_internal_signals() {
    for sig in 32..=34 {
        set_disposition(sig, libc::SIG_IGN);
    }
}

/// Sets one signal's disposition to SIG_DFL or SIG_IGN. Async-signal-safe. Raw rt_sigaction
/// because libc's wrappers refuse the signals libc reserves for itself (32, 33), which can
/// still arrive, or be inherited ignored.
fn set_disposition(sig: i32, handler: libc::sighandler_t) {
    let action = KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction with a valid kernel sigaction struct and sigsetsize 8; no old
    // action requested. The result is deliberately ignored (see the callers).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &action as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Waits up to `timeout` for a signal in `mask` (which must be blocked). `Ok(None)` on
/// timeout or interruption. Raw rt_sigtimedwait, for the reason given at [`SigMask`].
pub fn sigtimedwait(mask: SigMask, timeout: Duration) -> Result<Option<i32>, Errno> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: valid pointers to the mask and the timeout; the siginfo out-pointer may be NULL.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigtimedwait,
            &mask as *const SigMask,
            std::ptr::null_mut::<libc::siginfo_t>(),
            &ts as *const libc::timespec,
            8usize,
        )
    };
    match check(rc) {
        Ok(sig) => Ok(Some(sig as i32)),
        Err(Errno(libc::EAGAIN)) | Err(Errno(libc::EINTR)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// kill(2). `pid` may be negative (a process group) or -1 (everything we may signal).
pub fn kill(pid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid, sig) } as libc::c_long).map(drop)
}

pub fn getpgid(pid: i32) -> Result<i32, Errno> {
    // SAFETY: plain integer argument.
    check(unsafe { libc::getpgid(pid) } as libc::c_long).map(|p| p as i32)
}

pub fn setpgid(pid: i32, pgid: i32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments. Async-signal-safe.
    check(unsafe { libc::setpgid(pid, pgid) } as libc::c_long).map(drop)
}

pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail. Async-signal-safe.
    unsafe { libc::getpid() }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// True when `fd` refers to a terminal. Async-signal-safe.
pub fn isatty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the fd (one ioctl).
    unsafe { libc::isatty(fd) == 1 }
}

/// Makes `pgid` the foreground process group of the terminal on `fd`. Async-signal-safe.
/// The caller must block or ignore SIGTTOU: a background process calling this is otherwise
/// stopped by the kernel (tcsetpgrp(3)).
pub fn tcsetpgrp(fd: i32, pgid: i32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::tcsetpgrp(fd, pgid) } as libc::c_long).map(drop)
}

/// The foreground process group of the terminal on `fd`.
pub fn tcgetpgrp(fd: i32) -> Result<i32, Errno> {
    // SAFETY: plain integer argument.
    check(unsafe { libc::tcgetpgrp(fd) } as libc::c_long).map(|p| p as i32)
}

/// setsid(2): a new session and process group led by the caller. Async-signal-safe.
pub fn setsid() -> Result<(), Errno> {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() } as libc::c_long).map(drop)
}

/// Makes the terminal on `fd` the caller's controlling terminal (TIOCSCTTY). The caller must
/// be a session leader without one (right after [`setsid`]). Async-signal-safe.
pub fn set_controlling_tty(fd: i32) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal from another session).
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } as libc::c_long).map(drop)
}

/// dup2(2). Async-signal-safe.
pub fn dup2(old: i32, new: i32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::dup2(old, new) } as libc::c_long).map(drop)
}

/// fcntl(F_DUPFD_CLOEXEC): a close-on-exec copy of `fd` (to put a standard fd back later).
pub fn dup_cloexec(fd: i32) -> Result<i32, Errno> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) } as libc::c_long).map(|f| f as i32)
}

/// chdir(2).
pub fn chdir(path: &CStr) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chdir(path.as_ptr()) } as libc::c_long).map(drop)
}

/// A new pseudo-terminal: `(master, slave)`, both CLOEXEC, the slave not made anyone's
/// controlling terminal. The slave is opened from the master (TIOCGPTPEER, Linux 4.13), so no
/// path under /dev/pts is looked up; on older kernels it falls back to the TIOCGPTN name.
pub fn open_pty() -> Result<(i32, i32), Errno> {
    // SAFETY: constant NUL-terminated path.
    let master = check(unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)? as i32;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int; 0 unlocks the slave.
    if let Err(e) = check(unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &unlock) } as libc::c_long)
    {
        close(master);
        return Err(e);
    }
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags as an integer and returns a new fd.
    let peer = check(unsafe { libc::ioctl(master, libc::TIOCGPTPEER, flags) } as libc::c_long);
    let slave = match peer {
        Ok(fd) => fd as i32,
        Err(Errno(libc::EINVAL)) | Err(Errno(libc::ENOTTY)) => {
            let mut n: libc::c_uint = 0;
            // SAFETY: TIOCGPTN writes the pty number into a valid unsigned int.
            let rc = unsafe { libc::ioctl(master, libc::TIOCGPTN, &mut n) };
            if let Err(e) = check(rc as libc::c_long) {
                close(master);
                return Err(e);
            }
            let path = std::ffi::CString::new(format!("/dev/pts/{n}")).expect("no NUL");
            // SAFETY: NUL-terminated path.
            match check(unsafe { libc::open(path.as_ptr(), flags) } as libc::c_long) {
                Ok(fd) => fd as i32,
                Err(e) => {
                    close(master);
                    return Err(e);
                }
            }
        }
        Err(e) => {
            close(master);
            return Err(e);
        }
    };
    Ok((master, slave))
}

/// fchown(2).
pub fn fchown(fd: i32, uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::fchown(fd, uid, gid) } as libc::c_long).map(drop)
}

/// fchmod(2).
pub fn fchmod(fd: i32, mode: u32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::fchmod(fd, mode as libc::mode_t) } as libc::c_long).map(drop)
}

/// A terminal's settings.
pub type Termios = libc::termios;

pub fn tcgetattr(fd: i32) -> Result<Termios, Errno> {
    // SAFETY: termios is plain old data; tcgetattr fills it.
    let mut t: Termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    check(unsafe { libc::tcgetattr(fd, &mut t) } as libc::c_long)?;
    Ok(t)
}

/// tcsetattr(fd, TCSADRAIN): applied once pending output is written; typed-ahead input is
/// kept (TCSAFLUSH would throw it away).
pub fn tcsetattr(fd: i32, t: &Termios) -> Result<(), Errno> {
    // SAFETY: valid pointer to a termios.
    check(unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, t) } as libc::c_long).map(drop)
}

/// `t` in raw mode (cfmakeraw: no echo, no line editing, no signals from keys, no output
/// processing), for relaying bytes unchanged.
pub fn raw_mode(t: &Termios) -> Termios {
    let mut raw = *t;
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut raw) };
    raw
}

/// A terminal's window size.
pub type WinSize = libc::winsize;

pub fn get_winsize(fd: i32) -> Result<WinSize, Errno> {
    // SAFETY: winsize is plain old data.
    let mut ws: WinSize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a valid winsize.
    check(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } as libc::c_long)?;
    Ok(ws)
}

/// Sets the window size; the kernel then sends SIGWINCH to the terminal's foreground group.
pub fn set_winsize(fd: i32, ws: &WinSize) -> Result<(), Errno> {
    // SAFETY: TIOCSWINSZ reads a valid winsize.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, ws) } as libc::c_long).map(drop)
}

/// A non-blocking, CLOEXEC signalfd for `mask` (which must be blocked). Raw signalfd4 with
/// the kernel's 8-byte mask, for the reason given at [`SigMask`].
pub fn signalfd(mask: SigMask) -> Result<i32, Errno> {
    // SAFETY: fd -1 creates a new signalfd; the mask pointer and size 8 are valid.
    check(unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const SigMask,
            8usize,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        )
    })
    .map(|fd| fd as i32)
}

/// The next signal queued on a signalfd, or `None` when there is none.
pub fn read_signalfd(fd: i32) -> Result<Option<i32>, Errno> {
    // SAFETY: signalfd_siginfo is plain old data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading into a valid buffer of exactly one siginfo.
    let rc = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    match check(rc as libc::c_long) {
        Ok(n) if n as usize == size => Ok(Some(info.ssi_signo as i32)),
        Ok(_) => Ok(None),
        Err(Errno(libc::EAGAIN)) | Err(Errno(libc::EINTR)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// poll(2) over `fds`; `timeout` None waits forever. Returns how many are ready (0 on
/// timeout or EINTR).
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> Result<usize, Errno> {
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: pointer and length describe a live slice of pollfd.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    match check(rc as libc::c_long) {
        Ok(n) => Ok(n as usize),
        Err(Errno(libc::EINTR)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Sets O_NONBLOCK on `fd`. Only for descriptors this process created (a shared open file
/// description, such as an inherited terminal, would change for every process using it).
pub fn set_nonblocking(fd: i32) -> Result<(), Errno> {
    // SAFETY: F_GETFL/F_SETFL with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) } as libc::c_long)? as i32;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } as libc::c_long)
        .map(drop)
}

/// read(2) once; EINTR is retried.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        // SAFETY: pointer and length describe a live writable slice.
        match check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } as libc::c_long) {
            Ok(n) => return Ok(n as usize),
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
}

/// write(2) once; EINTR is retried.
pub fn write(fd: i32, buf: &[u8]) -> Result<usize, Errno> {
    loop {
        // SAFETY: pointer and length describe a live slice.
        match check(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) } as libc::c_long) {
            Ok(n) => return Ok(n as usize),
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The value of extended attribute `name` of the open file `fd`; `Ok(None)` when the file
/// has no such attribute (or the filesystem has no extended attributes).
pub fn fgetxattr(fd: i32, name: &CStr) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: valid NUL-terminated name and a live writable buffer.
        let rc = unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match check(rc as libc::c_long) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(Some(buf));
            }
            Err(Errno(libc::ENODATA)) | Err(Errno(libc::ENOTSUP)) => return Ok(None),
            Err(Errno(libc::ERANGE)) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process state: prctl, ids, capabilities
// ---------------------------------------------------------------------------------------------

fn prctl(op: i32, a: libc::c_ulong) -> Result<libc::c_long, Errno> {
    // SAFETY: the prctl operations used here take integer arguments only.
    check(unsafe {
        libc::prctl(
            op,
            a,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } as libc::c_long)
}

/// PR_SET_DUMPABLE: 0 makes /proc/self/* root-owned and refuses ptrace attach.
pub fn set_dumpable(on: bool) -> Result<(), Errno> {
    prctl(libc::PR_SET_DUMPABLE, on as libc::c_ulong).map(drop)
}

pub fn set_child_subreaper() -> Result<(), Errno> {
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1).map(drop)
}

/// Irreversible; inherited across fork and execve. Async-signal-safe.
pub fn set_no_new_privs() -> Result<(), Errno> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

pub fn get_no_new_privs() -> Result<bool, Errno> {
    prctl(libc::PR_GET_NO_NEW_PRIVS, 0).map(|v| v == 1)
}

/// Whether `cap` is in the bounding set; `Err(EINVAL)` past the last capability the kernel
/// knows. Async-signal-safe.
pub fn capbset_read(cap: u32) -> Result<bool, Errno> {
    prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong).map(|v| v == 1)
}

/// Removes every capability from the bounding set (needs CAP_SETPCAP). Async-signal-safe.
pub fn clear_bounding_set() -> Result<(), Errno> {
    for cap in 0..64u32 {
        match capbset_read(cap) {
            Ok(_) => {}
            Err(Errno(libc::EINVAL)) => break, // past cap_last_cap
            Err(e) => return Err(e),
        }
        prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)?;
    }
    Ok(())
}

/// True when any capability is still in the bounding set. Async-signal-safe.
pub fn bounding_set_nonempty() -> Result<bool, Errno> {
    for cap in 0..64u32 {
        match capbset_read(cap) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(Errno(libc::EINVAL)) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Clears the ambient set. Async-signal-safe.
pub fn clear_ambient() -> Result<(), Errno> {
    // SAFETY: integer-only prctl.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } as libc::c_long)
    .map(drop)
}

/// True when any capability is in the ambient set. Async-signal-safe.
pub fn ambient_nonempty() -> Result<bool, Errno> {
    for cap in 0..64u32 {
        // SAFETY: integer-only prctl.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        match check(rc as libc::c_long) {
            Ok(1) => return Ok(true),
            Ok(_) => {}
            Err(Errno(libc::EINVAL)) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Effective, permitted and inheritable capability sets as 64-bit masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// capget(2) for the calling thread. Async-signal-safe.
pub fn capget() -> Result<CapSets, Errno> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 takes a header and an array of two data structs, both valid here.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) })?;
    let join = |lo: u32, hi: u32| (hi as u64) << 32 | lo as u64;
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// capset(2) for the calling thread. Lowering is always allowed. Async-signal-safe.
pub fn capset(sets: CapSets) -> Result<(), Errno> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: sets.effective as u32,
            permitted: sets.permitted as u32,
            inheritable: sets.inheritable as u32,
        },
        CapData {
            effective: (sets.effective >> 32) as u32,
            permitted: (sets.permitted >> 32) as u32,
            inheritable: (sets.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: version 3 header plus two data structs, valid for the call.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) }).map(drop)
}

/// Raw setgroups(2) on the calling thread. Async-signal-safe.
pub fn setgroups(groups: &[libc::gid_t]) -> Result<(), Errno> {
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }).map(drop)
}

/// Raw getgroups(2) into `buf`; returns the count. Async-signal-safe.
pub fn getgroups(buf: &mut [libc::gid_t]) -> Result<usize, Errno> {
    // SAFETY: pointer and length describe a live writable slice.
    check(unsafe { libc::syscall(libc::SYS_getgroups, buf.len(), buf.as_mut_ptr()) })
        .map(|n| n as usize)
}

/// Raw setresgid(2) on the calling thread. Async-signal-safe.
pub fn setresgid(gid: u32) -> Result<(), Errno> {
    // SAFETY: integer arguments.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

/// Raw setresuid(2) on the calling thread. Async-signal-safe.
pub fn setresuid(uid: u32) -> Result<(), Errno> {
    // SAFETY: integer arguments.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

/// (real, effective, saved) user ids. Async-signal-safe.
pub fn getresuid() -> Result<(u32, u32, u32), Errno> {
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: three valid out-pointers.
    check(unsafe { libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s) })?;
    Ok((r, e, s))
}

/// (real, effective, saved) group ids. Async-signal-safe.
pub fn getresgid() -> Result<(u32, u32, u32), Errno> {
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: three valid out-pointers.
    check(unsafe { libc::syscall(libc::SYS_getresgid, &mut r, &mut e, &mut s) })?;
    Ok((r, e, s))
}

// ---------------------------------------------------------------------------------------------
// Files and descriptors
// ---------------------------------------------------------------------------------------------

/// Closes every fd from `first` to `last` inclusive. Async-signal-safe.
pub fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range takes integers; closing fds we do not own only happens in the
    // forked child or right before execve, where nothing else uses them.
    match check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }) {
        Ok(_) => Ok(()),
        Err(Errno(libc::ENOSYS)) => {
            // Kernels before 5.9: close one by one up to a sane limit.
            let end = last.min(65_535);
            for fd in first..=end {
                // SAFETY: closing an integer fd; EBADF is ignored.
                unsafe { libc::close(fd as i32) };
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A CLOEXEC pipe: (read end, write end).
pub fn pipe_cloexec() -> Result<(i32, i32), Errno> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    Ok((fds[0], fds[1]))
}

/// write(2) of the whole buffer, retrying on EINTR. Async-signal-safe.
pub fn write_all(fd: i32, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        // SAFETY: pointer and length describe a live slice.
        match check(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) } as libc::c_long) {
            Ok(n) => buf = &buf[n as usize..],
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// read(2) until `buf` is full or end of file, retrying on EINTR; returns bytes read.
pub fn read_full(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: pointer and length describe a live writable slice.
        match check(unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) } as libc::c_long)
        {
            Ok(0) => break,
            Ok(n) => got += n as usize,
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

pub fn close(fd: i32) {
    // SAFETY: closing an fd this module handed out; errors are irrelevant. Async-signal-safe.
    unsafe { libc::close(fd) };
}

/// Creates `path` exclusively (never following a symlink, never truncating an existing file),
/// writes `data`, closes it. `Ok(false)` when it already exists. Async-signal-safe.
pub fn create_exclusive(path: &CStr, data: &[u8], mode: u32) -> Result<bool, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    match check(fd as libc::c_long) {
        Ok(_) => {}
        Err(Errno(libc::EEXIST)) => return Ok(false),
        Err(e) => return Err(e),
    }
    let res = write_all(fd, data);
    close(fd);
    res.map(|_| true)
}

// ---------------------------------------------------------------------------------------------
// fork, exec, wait
// ---------------------------------------------------------------------------------------------

/// fork(2). Returns 0 in the child.
///
/// # Safety
/// The caller must be single-threaded or must only call async-signal-safe functions in the
/// child before `execve`/`_exit`.
pub unsafe fn fork() -> Result<i32, Errno> {
    // SAFETY: forwarded to the caller's contract.
    check(unsafe { libc::fork() } as libc::c_long).map(|p| p as i32)
}

/// execve(2): only returns on failure. Async-signal-safe.
pub fn execve(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> Errno {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: `path` is NUL-terminated; argv and envp are NULL-terminated arrays of pointers
    // to NUL-terminated strings kept alive by the caller.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

/// _exit(2): no atexit handlers, no flushing. Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: terminates the process immediately.
    unsafe { libc::_exit(code) }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildEnd {
    Exited(i32),
    Signaled(i32),
}

/// One `waitpid(pid, WNOHANG)`: `Ok(None)` when nothing is ready, `Err(ECHILD)` when there
/// are no children at all.
pub fn waitpid_nohang(pid: i32) -> Result<Option<(i32, ChildEnd)>, Errno> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let rc = check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } as libc::c_long)?;
    if rc == 0 {
        return Ok(None);
    }
    Ok(Some((rc as i32, decode_status(status))))
}

/// Blocking `waitpid(pid, 0)`, retrying on EINTR.
pub fn waitpid_blocking(pid: i32) -> Result<(i32, ChildEnd), Errno> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        match check(unsafe { libc::waitpid(pid, &mut status, 0) } as libc::c_long) {
            Ok(rc) => return Ok((rc as i32, decode_status(status))),
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
}

fn decode_status(status: i32) -> ChildEnd {
    if libc::WIFSIGNALED(status) {
        ChildEnd::Signaled(libc::WTERMSIG(status))
    } else {
        ChildEnd::Exited(libc::WEXITSTATUS(status))
    }
}

/// Pointer to the process's `environ` array (NULL-terminated).
pub fn environ() -> *const *mut libc::c_char {
    unsafe extern "C" {
        static environ: *const *mut libc::c_char;
    }
    // SAFETY: reading the libc global; callers only read it while single-threaded.
    unsafe { environ }
}

// ---------------------------------------------------------------------------------------------
// Memory and randomness (secret.rs)
// ---------------------------------------------------------------------------------------------

/// mlock(2): keeps the pages of `buf` in RAM (never written to swap).
pub fn mlock(buf: &[u8]) -> Result<(), Errno> {
    // SAFETY: pointer and length describe one live allocation; mlock only pins its pages.
    check(unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) } as libc::c_long).map(drop)
}

/// munlock(2) of what [`mlock`] pinned (harmless on pages that are not locked).
pub fn munlock(buf: &[u8]) {
    // SAFETY: pointer and length describe one live allocation; the result does not matter.
    unsafe { libc::munlock(buf.as_ptr().cast(), buf.len()) };
}

/// Fills `buf` from the kernel's CSPRNG (getrandom(2), blocking until it is seeded),
/// retrying on EINTR and short reads.
pub fn getrandom(buf: &mut [u8]) -> Result<(), Errno> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a live writable buffer of `rest.len()` bytes.
        match check(unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) } as _) {
            Ok(n) => filled += n as usize,
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resource limits (fdlimit.rs)
// ---------------------------------------------------------------------------------------------

/// prlimit64(0, RLIMIT_NOFILE, new, old): sets `(soft, hard)` when `new` is given and
/// returns the limit as it was. A raw system call: the limit is per process, and the
/// forked child's restore must be async-signal-safe (musl's setrlimit synchronises all
/// threads with signals). Async-signal-safe.
pub fn prlimit_nofile(new: Option<(u64, u64)>) -> Result<(u64, u64), Errno> {
    let new = new.map(|(soft, hard)| libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    });
    let new_ptr = new
        .as_ref()
        .map_or(std::ptr::null(), |n| n as *const libc::rlimit64);
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `new_ptr` is NULL or points at a live rlimit64 the kernel only reads; `old` is
    // a live local it writes.
    check(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::pid_t,
            libc::RLIMIT_NOFILE,
            new_ptr,
            &mut old as *mut libc::rlimit64,
        )
    })?;
    Ok((old.rlim_cur, old.rlim_max))
}

// ---------------------------------------------------------------------------------------------
// seccomp (egress/seccomp.rs builds the programs)
// ---------------------------------------------------------------------------------------------

// <linux/seccomp.h>
const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;

/// seccomp(SECCOMP_GET_ACTION_AVAIL): whether the kernel can install filters that return
/// `action`. Changes nothing in the process.
pub fn seccomp_action_available(action: u32) -> Result<(), Errno> {
    // SAFETY: the operation reads one u32 through the pointer, which points at a live local.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0 as libc::c_ulong,
            &action as *const u32,
        )
    })
    .map(drop)
}

/// seccomp(SECCOMP_SET_MODE_FILTER) of a classic BPF program on the calling thread (no
/// TSYNC: for a single-threaded, freshly forked child). The caller has set no_new_privs.
/// Async-signal-safe.
pub fn seccomp_set_filter(program: &[libc::sock_filter]) -> Result<(), Errno> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `len` instructions that outlive the call; the kernel copies
    // the program during the call and never writes through the pointer.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    })
    .map(drop)
}

// ---------------------------------------------------------------------------------------------
// Sockets (the proxy's listener, the api-only socket)
// ---------------------------------------------------------------------------------------------

/// listen(2) again on a bound, listening socket with the largest backlog the kernel allows
/// (a negative backlog is clamped to net.core.somaxconn).
pub fn listen_max_backlog(fd: i32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::listen(fd, -1) } as libc::c_long).map(drop)
}

/// The uid of the process at the other end of a connected Unix socket (SO_PEERCRED, filled
/// in by the kernel at connect time; the peer cannot forge it).
pub fn peer_uid(fd: i32) -> Result<u32, Errno> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals of the sizes the kernel expects.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok(cred.uid)
}

// ---------------------------------------------------------------------------------------------
// `bottle-init check`'s probes: what an attacker of the child's uid would try on PID 1
// ---------------------------------------------------------------------------------------------

/// `ptrace(PTRACE_ATTACH, pid)`: `Ok` means the kernel allowed the attach (which must never
/// happen for PID 1); then the tracee is collected in its attach stop and detached at once,
/// so it is not left stopped.
pub fn ptrace_attach_probe(pid: i32) -> Result<(), Errno> {
    // SAFETY: PTRACE_ATTACH takes no pointers (addr and data are ignored).
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    })?;
    let mut status = 0;
    // SAFETY: `status` is a live local; __WALL waits for the tracee that is not our child.
    let _ = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    // SAFETY: PTRACE_DETACH with signal 0 takes no pointers.
    let _ = unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    Ok(())
}

/// `process_vm_readv` of `buf.len()` bytes at `addr` in `pid`. The kernel checks the
/// permission (PTRACE_MODE_ATTACH) before the address, so EPERM means refused and EFAULT means
/// allowed (at a bad address).
pub fn process_vm_read(pid: i32, addr: usize, buf: &mut [u8]) -> Result<usize, Errno> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which is live and writable for its length; the remote
    // iovec is only read by the kernel, which checks that address itself.
    check(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long)
        .map(|n| n as usize)
}

/// socket(2) of `domain`/`ty`, closed at once: whether this process may create one.
pub fn try_socket(domain: i32, ty: i32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) } as libc::c_long)?;
    close(fd as i32);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_and_descriptions() {
        assert_eq!(Errno(libc::ENOSYS).name(), "ENOSYS");
        assert_eq!(Errno(libc::EOPNOTSUPP).name(), "EOPNOTSUPP");
        assert_eq!(Errno(4095).name(), "errno 4095");
        let d = Errno(libc::ENOENT).desc();
        assert!(d.contains("No such file") && !d.contains("os error"), "{d}");
    }

    #[test]
    fn peer_uid_is_the_connecting_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(peer_uid(a.as_raw_fd()), Ok(geteuid()));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(peer_uid(f.as_raw_fd()), Err(Errno(libc::ENOTSOCK)));
    }

    #[test]
    fn nofile_limit_reads_back_what_was_set() {
        let (soft, hard) = prlimit_nofile(None).unwrap();
        assert_eq!(prlimit_nofile(Some((soft, hard))), Ok((soft, hard)));
        let mut buf = [0u8; 64];
        getrandom(&mut buf).unwrap();
        assert_ne!(buf, [0u8; 64]);
    }
}
