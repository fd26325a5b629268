//! `api-only`: a seccomp filter that leaves the child's process tree without IP networking.
//!
//! Classic BPF, written out by hand (17 instructions) rather than through a crate: the program
//! is a `static` array, so installing it in a forked child is two syscalls and no allocation
//! (async-signal-safe), and it works under Docker's default capabilities because
//! `no_new_privs` replaces CAP_SYS_ADMIN for seccomp(2).
//!
//! What the filter does, in order (seccomp(2), "Pitfalls": check the architecture first):
//! 1. `seccomp_data.arch` is not the native one (x86-64 / AArch64): kill the process. This
//!    closes the i386 ABI (`int 0x80`, `sysenter`, 32-bit `syscall`), whose `socketcall` and
//!    `socket` numbers a 64-bit filter would not see, and AArch32 compat on arm64.
//! 2. x86-64 only: a syscall number with `__X32_SYSCALL_BIT` (0x4000_0000) set: kill the
//!    process. The x32 ABI shares the x86-64 arch value, so without this `socket | 0x40000000`
//!    would slip past a check on `socket`.
//! 3. `socket`, `socketpair`: allowed for `AF_UNIX` (the API socket, local IPC) and
//!    `AF_NETLINK` (kernel queries such as `getifaddrs`; no packets leave the host, and changing
//!    anything needs CAP_NET_ADMIN the child does not have). Every other family — `AF_INET`,
//!    `AF_INET6`, `AF_PACKET`, raw sockets, `AF_VSOCK`, `AF_XDP`, ... — fails with `EACCES`
//!    ("permission to create a socket of the specified type is denied", socket(2)), a clean
//!    error rather than a crash. Only the low 32 bits of the domain are compared, which is what
//!    the kernel uses (`int family`).
//! 4. `io_uring_setup`, `io_uring_enter`, `io_uring_register`: `ENOSYS`, so runtimes fall back
//!    to epoll; io_uring's `IORING_OP_SOCKET` creates sockets without the `socket` syscall.
//! 5. Everything else: allowed.
//!
//! `socketcall(2)` does not exist in the x86-64 or AArch64 tables; its i386 form dies in step 1.
//! The filter is inherited across fork and execve and cannot be removed.

use std::io;

use nix::errno::Errno;

// <linux/filter.h> classic BPF opcodes.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP (0x05) | BPF_JEQ (0x10) | BPF_K (0x00)
const BPF_JGE_K: u16 = 0x35; // BPF_JMP (0x05) | BPF_JGE (0x30) | BPF_K (0x00)
const BPF_RET_K: u16 = 0x06; // BPF_RET (0x06) | BPF_K (0x00)

// <linux/seccomp.h> return actions.
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Offsets into `struct seccomp_data { int nr; __u32 arch; __u64 ip; __u64 args[6]; }`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of args[0] (both supported arches are little-endian).
const OFF_ARG0_LO: u32 = 16;

// <linux/audit.h>: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE, EM_AARCH64 | ...
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xc000_00b7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NATIVE_ARCH: u32 = 0; // never matches: install() refuses on these targets.

const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const HAS_X32: bool = cfg!(target_arch = "x86_64");

const NR_SOCKET: u32 = libc::SYS_socket as u32;
const NR_SOCKETPAIR: u32 = libc::SYS_socketpair as u32;
const NR_IO_URING_SETUP: u32 = libc::SYS_io_uring_setup as u32;
const NR_IO_URING_ENTER: u32 = libc::SYS_io_uring_enter as u32;
const NR_IO_URING_REGISTER: u32 = libc::SYS_io_uring_register as u32;

/// Errno for refused socket families.
pub const SOCKET_ERRNO: Errno = Errno::EACCES;
/// Errno for the io_uring syscalls.
pub const IO_URING_ERRNO: Errno = Errno::ENOSYS;

// Instruction positions, so jumps are computed rather than counted by hand.
const P_SOCKET: usize = if HAS_X32 { 4 } else { 3 };
const P_ALLOW: usize = P_SOCKET + 5;
const P_CHECK_DOMAIN: usize = P_ALLOW + 1;
const P_ALLOW_SOCKET: usize = P_CHECK_DOMAIN + 4;
const P_ENOSYS: usize = P_ALLOW_SOCKET + 1;
const P_KILL: usize = P_ENOSYS + 1;
const LEN: usize = P_KILL + 1;

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump at `at`: to `yes` when true, to `no` otherwise (absolute positions).
const fn jump(at: usize, code: u16, k: u32, yes: usize, no: usize) -> libc::sock_filter {
    assert!(yes > at && no > at && yes - at - 1 <= 255 && no - at - 1 <= 255);
    libc::sock_filter {
        code,
        jt: (yes - at - 1) as u8,
        jf: (no - at - 1) as u8,
        k,
    }
}

const fn build() -> [libc::sock_filter; LEN] {
    let mut p = [stmt(BPF_RET_K, RET_KILL_PROCESS); LEN];
    p[0] = stmt(BPF_LD_W_ABS, OFF_ARCH);
    p[1] = jump(1, BPF_JEQ_K, NATIVE_ARCH, 2, P_KILL);
    p[2] = stmt(BPF_LD_W_ABS, OFF_NR);
    if HAS_X32 {
        p[3] = jump(3, BPF_JGE_K, X32_SYSCALL_BIT, P_KILL, 4);
    }
    let s = P_SOCKET;
    p[s] = jump(s, BPF_JEQ_K, NR_SOCKET, P_CHECK_DOMAIN, s + 1);
    p[s + 1] = jump(s + 1, BPF_JEQ_K, NR_SOCKETPAIR, P_CHECK_DOMAIN, s + 2);
    p[s + 2] = jump(s + 2, BPF_JEQ_K, NR_IO_URING_SETUP, P_ENOSYS, s + 3);
    p[s + 3] = jump(s + 3, BPF_JEQ_K, NR_IO_URING_ENTER, P_ENOSYS, s + 4);
    p[s + 4] = jump(s + 4, BPF_JEQ_K, NR_IO_URING_REGISTER, P_ENOSYS, P_ALLOW);
    p[P_ALLOW] = stmt(BPF_RET_K, RET_ALLOW);
    let c = P_CHECK_DOMAIN;
    p[c] = stmt(BPF_LD_W_ABS, OFF_ARG0_LO);
    p[c + 1] = jump(
        c + 1,
        BPF_JEQ_K,
        libc::AF_UNIX as u32,
        P_ALLOW_SOCKET,
        c + 2,
    );
    p[c + 2] = jump(
        c + 2,
        BPF_JEQ_K,
        libc::AF_NETLINK as u32,
        P_ALLOW_SOCKET,
        c + 3,
    );
    p[c + 3] = stmt(BPF_RET_K, RET_ERRNO | SOCKET_ERRNO as u32);
    p[P_ALLOW_SOCKET] = stmt(BPF_RET_K, RET_ALLOW);
    p[P_ENOSYS] = stmt(BPF_RET_K, RET_ERRNO | IO_URING_ERRNO as u32);
    p[P_KILL] = stmt(BPF_RET_K, RET_KILL_PROCESS);
    p
}

static API_ONLY: [libc::sock_filter; LEN] = build();

/// A ready-to-install seccomp program.
#[derive(Clone, Copy)]
pub struct Filter {
    prog: &'static [libc::sock_filter],
}

impl Filter {
    /// The instructions (for inspection and tests).
    pub fn instructions(&self) -> &'static [libc::sock_filter] {
        self.prog
    }
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({} instructions)", self.prog.len())
    }
}

/// The `api-only` filter. Free to call anywhere (it returns a reference to a static).
pub fn prepare() -> Filter {
    Filter { prog: &API_ONLY }
}

/// Install `filter` on the calling thread (and so on everything it later forks or execs):
/// `PR_SET_NO_NEW_PRIVS`, then `seccomp(SECCOMP_SET_MODE_FILTER)`.
///
/// Async-signal-safe: two syscalls, no allocation, no locks; meant for a freshly forked,
/// single-threaded child just before `execve` (so no `SECCOMP_FILTER_FLAG_TSYNC`). Call it
/// after the uid/gid switch: nothing after it in the child may need `socket(AF_INET)`.
pub fn install(filter: &Filter) -> Result<(), Errno> {
    if NATIVE_ARCH == 0 {
        // No architecture check can be written for this target: refuse rather than run open.
        return Err(Errno::ENOSYS);
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers; it only sets a flag
    // on the calling thread, which seccomp(2) requires for unprivileged callers.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Errno::result(rc)?;
    let fprog = libc::sock_fprog {
        len: filter.prog.len() as u16,
        filter: filter.prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at a 'static, well-formed program of `len` instructions; the
    // kernel copies it during the call and never writes through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    Errno::result(rc).map(drop)
}

/// `install(&prepare())` with an `io::Error` (no allocation either: it wraps the errno).
pub fn install_api_only_filter() -> io::Result<()> {
    install(&prepare()).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the subset the filter uses, over a `seccomp_data`.
    fn run(prog: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                    pc += 1;
                }
                BPF_JEQ_K | BPF_JGE_K => {
                    let t = if i.code == BPF_JEQ_K {
                        acc == i.k
                    } else {
                        acc >= i.k
                    };
                    pc += 1 + if t { i.jt } else { i.jf } as usize;
                }
                BPF_RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn native(nr: i64, arg0: u64) -> u32 {
        run(
            prepare().instructions(),
            nr as u32,
            NATIVE_ARCH,
            [arg0, 1, 0, 0, 0, 0],
        )
    }

    const EACCES: u32 = RET_ERRNO | libc::EACCES as u32;
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn shape() {
        assert_eq!(LEN, if HAS_X32 { 17 } else { 16 });
        // Every path ends in a return; every jump stays inside the program.
        for (at, i) in API_ONLY.iter().enumerate() {
            if i.code == BPF_JEQ_K || i.code == BPF_JGE_K {
                assert!(at + 1 + (i.jt.max(i.jf) as usize) < LEN);
            }
        }
        assert_eq!(API_ONLY[LEN - 1].code, BPF_RET_K);
    }

    #[test]
    fn socket_families() {
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            assert_eq!(native(nr, libc::AF_UNIX as u64), RET_ALLOW);
            assert_eq!(native(nr, libc::AF_NETLINK as u64), RET_ALLOW);
            for fam in [
                libc::AF_INET,
                libc::AF_INET6,
                libc::AF_PACKET,
                libc::AF_VSOCK,
                libc::AF_XDP,
                libc::AF_BLUETOOTH,
                libc::AF_TIPC,
                libc::AF_ALG,
                libc::AF_CAN,
                libc::AF_RDS,
                libc::AF_UNSPEC,
                255,
            ] {
                assert_eq!(native(nr, fam as u64), EACCES, "family {fam}");
            }
            // The kernel reads `int family`: garbage in the high half does not matter, and
            // AF_INET with high bits set is still refused.
            assert_eq!(native(nr, (1 << 32) | libc::AF_INET as u64), EACCES);
            assert_eq!(native(nr, (7 << 32) | libc::AF_UNIX as u64), RET_ALLOW);
        }
    }

    #[test]
    fn io_uring_is_gone() {
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ] {
            assert_eq!(native(nr, 0), ENOSYS);
        }
    }

    #[test]
    fn ordinary_syscalls_pass() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_connect,
            libc::SYS_sendto,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_mmap,
            libc::SYS_exit_group,
        ] {
            assert_eq!(native(nr, libc::AF_INET as u64), RET_ALLOW, "nr {nr}");
        }
    }

    #[test]
    fn foreign_architectures_die() {
        let i386 = 0x4000_0003; // AUDIT_ARCH_I386
        let arm = 0x4000_0028; // AUDIT_ARCH_ARM
        for arch in [i386, arm, 0, 0xc000_003e ^ 1] {
            if arch == NATIVE_ARCH {
                continue;
            }
            // i386 socketcall is 102 and socket is 359: whatever the number, it dies.
            for nr in [102, 359, 3, 0] {
                assert_eq!(
                    run(&API_ONLY, nr, arch, [2, 1, 0, 0, 0, 0]),
                    RET_KILL_PROCESS
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_numbers_die() {
        for nr in [
            X32_SYSCALL_BIT | libc::SYS_socket as u32,
            X32_SYSCALL_BIT | 41,
            X32_SYSCALL_BIT,
            u32::MAX,
        ] {
            assert_eq!(
                run(&API_ONLY, nr, NATIVE_ARCH, [2, 1, 0, 0, 0, 0]),
                RET_KILL_PROCESS
            );
        }
    }
}
