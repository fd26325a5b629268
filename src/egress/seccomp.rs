//! The seccomp filters of the locked egress modes: `api-only` leaves the child's process tree
//! without IP networking; `allowlist` leaves it TCP and UDP only (nftables then decides where
//! those may go), so families nftables never sees (AF_VSOCK, AF_ALG, AF_PACKET, raw IP, ...)
//! are refused too.
//!
//! Classic BPF, written out by hand rather than through a crate: each program is built by a
//! `const fn` into a fixed-size array, so installing it in a forked child is two syscalls and
//! no allocation (async-signal-safe), and it works under Docker's default capabilities because
//! `no_new_privs` replaces CAP_SYS_ADMIN for seccomp(2). The builder takes the architecture
//! ([`Arch`]: its audit value and syscall numbers), so the tests build and run the AArch64
//! program on an x86-64 host too (and the other way round).
//!
//! What a filter does, in order (seccomp(2), "Pitfalls": check the architecture first):
//! 1. `seccomp_data.arch` is not the architecture the program was built for: kill the
//!    process. This closes the i386 ABI on x86-64 (`int 0x80`, `sysenter`, 32-bit `syscall`,
//!    whose `socketcall` and `socket` numbers a 64-bit filter would not see) and AArch32
//!    compat on arm64 (`AUDIT_ARCH_ARM`).
//! 2. x86-64 only: a syscall number with `__X32_SYSCALL_BIT` (0x4000_0000) set: kill the
//!    process. The x32 ABI shares the x86-64 arch value, so without this `socket | 0x40000000`
//!    would slip past a check on `socket`.
//! 3. `socket`, `socketpair`: allowed for `AF_UNIX` (the API socket, local IPC) and
//!    `AF_NETLINK` (kernel queries such as `getifaddrs`; no packets leave the host, and changing
//!    anything needs CAP_NET_ADMIN the child does not have). `allowlist` also allows `AF_INET`
//!    and `AF_INET6` with type `SOCK_STREAM` or `SOCK_DGRAM` (after masking `SOCK_NONBLOCK` and
//!    `SOCK_CLOEXEC`): no raw sockets. Everything else fails with `EACCES` ("permission to
//!    create a socket of the specified type is denied", socket(2)), a clean error rather than a
//!    crash. Only the low 32 bits of an argument are compared, which is what the kernel uses
//!    (`int family`, `int type`).
//! 4. `io_uring_setup`, `io_uring_enter`, `io_uring_register`: `ENOSYS`, so runtimes fall back
//!    to epoll; io_uring's `IORING_OP_SOCKET` creates sockets without the `socket` syscall.
//! 5. Everything else: allowed.
//!
//! `socketcall(2)` does not exist in the x86-64 or AArch64 tables; its i386 and AArch32 forms
//! die in step 1. The filter is inherited across fork and execve and cannot be removed.
//!
//! [`probe`] asks the kernel, without side effects, whether filters can be installed at all
//! (they cannot under qemu-user, or on a kernel without `CONFIG_SECCOMP_FILTER`), so a locked
//! mode refuses to start with that reason before anything else happens.

use std::fmt;
use std::io;

use nix::errno::Errno;

// <linux/filter.h> classic BPF opcodes.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP (0x05) | BPF_JEQ (0x10) | BPF_K (0x00)
const BPF_JGE_K: u16 = 0x35; // BPF_JMP (0x05) | BPF_JGE (0x30) | BPF_K (0x00)
const BPF_AND_K: u16 = 0x54; // BPF_ALU (0x04) | BPF_AND (0x50) | BPF_K (0x00)
const BPF_RET_K: u16 = 0x06; // BPF_RET (0x06) | BPF_K (0x00)

// <linux/seccomp.h> return actions.
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Offsets into `struct seccomp_data { int nr; __u32 arch; __u64 ip; __u64 args[6]; }`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of args[0] and args[1] (both supported architectures are little-endian).
const OFF_ARG0_LO: u32 = 16;
const OFF_ARG1_LO: u32 = 24;

const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Socket families and types: the same values on x86-64 and AArch64 (<linux/socket.h>,
// <asm-generic/fcntl.h>: SOCK_NONBLOCK is O_NONBLOCK, SOCK_CLOEXEC is O_CLOEXEC).
const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_NETLINK: u32 = 16;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_FLAGS: u32 = 0o4000 | 0o2000000; // SOCK_NONBLOCK | SOCK_CLOEXEC

/// Errno for refused socket families and types.
pub const SOCKET_ERRNO: Errno = Errno::EACCES;
/// Errno for the io_uring syscalls.
pub const IO_URING_ERRNO: Errno = Errno::ENOSYS;

/// What a filter needs to know about an architecture: its `AUDIT_ARCH_*` value and the
/// numbers of the syscalls it treats specially.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    pub name: &'static str,
    /// `seccomp_data.arch` for this ABI (<linux/audit.h>).
    pub audit: u32,
    /// x86-64: the x32 ABI shares the arch value and marks its numbers with bit 30.
    pub x32_bit: bool,
    pub socket: u32,
    pub socketpair: u32,
    pub io_uring_setup: u32,
    pub io_uring_enter: u32,
    pub io_uring_register: u32,
}

/// x86-64 (arch/x86/entry/syscalls/syscall_64.tbl).
pub const X86_64: Arch = Arch {
    name: "x86-64",
    audit: 0xc000_003e, // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    x32_bit: true,
    socket: 41,
    socketpair: 53,
    io_uring_setup: 425,
    io_uring_enter: 426,
    io_uring_register: 427,
};

/// AArch64 (include/uapi/asm-generic/unistd.h).
pub const AARCH64: Arch = Arch {
    name: "aarch64",
    audit: 0xc000_00b7, // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    x32_bit: false,
    socket: 198,
    socketpair: 199,
    io_uring_setup: 425,
    io_uring_enter: 426,
    io_uring_register: 427,
};

/// `AUDIT_ARCH_I386` and `AUDIT_ARCH_ARM`: the compat ABIs every filter kills.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

/// The architecture this binary runs on, if a filter can be written for it.
pub const NATIVE: Option<Arch> = if cfg!(target_arch = "x86_64") {
    Some(X86_64)
} else if cfg!(target_arch = "aarch64") {
    Some(AARCH64)
} else {
    None
};

/// Which locked mode a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Sockets: AF_UNIX and AF_NETLINK only.
    ApiOnly,
    /// Sockets: AF_UNIX, AF_NETLINK, and stream/datagram AF_INET/AF_INET6.
    Allowlist,
}

/// Longest program the builder makes (the allowlist one on x86-64 is 25 instructions).
const MAX_LEN: usize = 32;

/// A ready-to-install seccomp program (a plain array: copying it allocates nothing).
#[derive(Clone, Copy)]
pub struct Filter {
    insns: [libc::sock_filter; MAX_LEN],
    len: usize,
    pub arch: Arch,
    pub policy: Policy,
}

impl Filter {
    /// The instructions (for inspection and tests).
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.insns[..self.len]
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Filter({:?} for {}, {} instructions)",
            self.policy, self.arch.name, self.len
        )
    }
}

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Where the shared return instructions land, so jumps are computed rather than counted.
struct Layout {
    check_domain: usize,
    check_type: usize,
    allow: usize,
    eacces: usize,
    enosys: usize,
    kill: usize,
    len: usize,
}

const fn layout(arch: &Arch, policy: Policy) -> Layout {
    // ld arch, jeq arch, ld nr, [jge x32], 5 syscall comparisons.
    let check_domain = 3 + arch.x32_bit as usize + 5;
    // ld arg0, jeq unix, jeq netlink, [jeq inet, jeq inet6].
    let inet = matches!(policy, Policy::Allowlist);
    let check_type = check_domain + 3 + 2 * inet as usize;
    // ld arg1, and, jeq stream, jeq dgram.
    let allow = check_type + 4 * inet as usize;
    Layout {
        check_domain,
        check_type,
        allow,
        eacces: allow + 1,
        enosys: allow + 2,
        kill: allow + 3,
        len: allow + 4,
    }
}

/// Appends instructions; conditional jumps name absolute targets, which must lie ahead
/// (classic BPF only jumps forward).
struct Asm {
    p: [libc::sock_filter; MAX_LEN],
    at: usize,
}

impl Asm {
    const fn stmt(&mut self, code: u16, k: u32) {
        self.p[self.at] = stmt(code, k);
        self.at += 1;
    }

    const fn jump(&mut self, code: u16, k: u32, yes: usize, no: usize) {
        let at = self.at;
        assert!(yes > at && no > at && yes - at - 1 <= 255 && no - at - 1 <= 255);
        self.p[at] = libc::sock_filter {
            code,
            jt: (yes - at - 1) as u8,
            jf: (no - at - 1) as u8,
            k,
        };
        self.at += 1;
    }
}

/// Builds the filter for `policy` on `arch` (see the module docs for what it does).
pub const fn build(arch: Arch, policy: Policy) -> Filter {
    let l = layout(&arch, policy);
    assert!(l.len <= MAX_LEN);
    let mut a = Asm {
        p: [stmt(BPF_RET_K, RET_KILL_PROCESS); MAX_LEN],
        at: 0,
    };
    a.stmt(BPF_LD_W_ABS, OFF_ARCH);
    a.jump(BPF_JEQ_K, arch.audit, 2, l.kill);
    a.stmt(BPF_LD_W_ABS, OFF_NR);
    if arch.x32_bit {
        let next = a.at + 1;
        a.jump(BPF_JGE_K, X32_SYSCALL_BIT, l.kill, next);
    }
    let s = a.at;
    a.jump(BPF_JEQ_K, arch.socket, l.check_domain, s + 1);
    a.jump(BPF_JEQ_K, arch.socketpair, l.check_domain, s + 2);
    a.jump(BPF_JEQ_K, arch.io_uring_setup, l.enosys, s + 3);
    a.jump(BPF_JEQ_K, arch.io_uring_enter, l.enosys, s + 4);
    a.jump(BPF_JEQ_K, arch.io_uring_register, l.enosys, l.allow);
    assert!(a.at == l.check_domain);
    a.stmt(BPF_LD_W_ABS, OFF_ARG0_LO);
    let c = a.at;
    a.jump(BPF_JEQ_K, AF_UNIX, l.allow, c + 1);
    match policy {
        Policy::ApiOnly => a.jump(BPF_JEQ_K, AF_NETLINK, l.allow, l.eacces),
        Policy::Allowlist => {
            a.jump(BPF_JEQ_K, AF_NETLINK, l.allow, c + 2);
            a.jump(BPF_JEQ_K, AF_INET, l.check_type, c + 3);
            a.jump(BPF_JEQ_K, AF_INET6, l.check_type, l.eacces);
            assert!(a.at == l.check_type);
            a.stmt(BPF_LD_W_ABS, OFF_ARG1_LO);
            a.stmt(BPF_AND_K, !SOCK_FLAGS);
            let t = a.at;
            a.jump(BPF_JEQ_K, SOCK_STREAM, l.allow, t + 1);
            a.jump(BPF_JEQ_K, SOCK_DGRAM, l.allow, l.eacces);
        }
    }
    assert!(a.at == l.allow);
    a.stmt(BPF_RET_K, RET_ALLOW);
    a.stmt(BPF_RET_K, RET_ERRNO | SOCKET_ERRNO as u32);
    a.stmt(BPF_RET_K, RET_ERRNO | IO_URING_ERRNO as u32);
    a.stmt(BPF_RET_K, RET_KILL_PROCESS);
    assert!(a.at == l.len);
    Filter {
        insns: a.p,
        len: l.len,
        arch,
        policy,
    }
}

static NATIVE_API_ONLY: Option<Filter> = match NATIVE {
    Some(arch) => Some(build(arch, Policy::ApiOnly)),
    None => None,
};
static NATIVE_ALLOWLIST: Option<Filter> = match NATIVE {
    Some(arch) => Some(build(arch, Policy::Allowlist)),
    None => None,
};

/// The native filter for `policy`. `None` on an architecture no filter is written for
/// ([`probe`] refuses there, so a locked mode never starts without its filter).
pub fn for_policy(policy: Policy) -> Option<Filter> {
    match policy {
        Policy::ApiOnly => NATIVE_API_ONLY,
        Policy::Allowlist => NATIVE_ALLOWLIST,
    }
}

/// The native `api-only` filter.
///
/// # Panics
/// On an architecture other than x86-64 and AArch64 (see [`NATIVE`]).
pub fn prepare() -> Filter {
    for_policy(Policy::ApiOnly).expect("seccomp filters exist for x86-64 and AArch64 only")
}

/// The native `allowlist` filter. Panics like [`prepare`].
pub fn prepare_allowlist() -> Filter {
    for_policy(Policy::Allowlist).expect("seccomp filters exist for x86-64 and AArch64 only")
}

/// Why this system cannot install the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// No filter is written for this CPU architecture.
    Arch,
    /// seccomp(2) is missing or refused: its errno.
    Kernel(Errno),
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsupported::Arch => write!(
                f,
                "seccomp filters are written only for x86-64 and AArch64, not for this CPU \
                 architecture"
            ),
            Unsupported::Kernel(e) => f.write_str(&explain(*e)),
        }
    }
}

/// What an errno from installing (or probing) a filter means, in words.
pub fn explain(e: Errno) -> String {
    match e {
        Errno::ENOSYS => "seccomp is not available here: the seccomp(2) system call is \
                          missing (ENOSYS); this kernel has no seccomp support, or the program \
                          runs under an emulator such as qemu-user, which cannot install filters"
            .to_string(),
        Errno::EINVAL | Errno::EOPNOTSUPP => format!(
            "seccomp filters are not supported by this kernel ({e:?}: {}); it needs \
             CONFIG_SECCOMP_FILTER and Linux 4.14 or later",
            e.desc()
        ),
        Errno::EPERM | Errno::EACCES => format!(
            "installing a seccomp filter was refused ({e:?}: {}); the container's own seccomp \
             profile forbids seccomp(2): use Docker's default profile",
            e.desc()
        ),
        other => format!(
            "installing a seccomp filter failed ({other:?}: {})",
            other.desc()
        ),
    }
}

// <linux/seccomp.h>
const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;

/// Checks, without installing anything, that the kernel can install the filters: the
/// seccomp(2) call exists and knows every action they use. For a locked mode's start-up, before
/// any side effect.
pub fn probe() -> Result<(), Unsupported> {
    if NATIVE.is_none() {
        return Err(Unsupported::Arch);
    }
    for action in [RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW] {
        // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer, which points at
        // a live local; it changes nothing in the process.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_GET_ACTION_AVAIL,
                0 as libc::c_ulong,
                &action as *const u32,
            )
        };
        if rc != 0 {
            return Err(Unsupported::Kernel(Errno::last()));
        }
    }
    Ok(())
}

/// Install `filter` on the calling thread (and so on everything it later forks or execs):
/// `PR_SET_NO_NEW_PRIVS`, then `seccomp(SECCOMP_SET_MODE_FILTER)`.
///
/// Async-signal-safe: two syscalls, no allocation, no locks; meant for a freshly forked,
/// single-threaded child just before `execve` (so no `SECCOMP_FILTER_FLAG_TSYNC`). Call it
/// after the uid/gid switch: nothing after it in the child may need a refused socket.
pub fn install(filter: &Filter) -> Result<(), Errno> {
    if NATIVE.map(|a| a.audit) != Some(filter.arch.audit) {
        // A program for another architecture would kill the process at its first syscall.
        return Err(Errno::ENOEXEC);
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers; it only sets a flag
    // on the calling thread, which seccomp(2) requires for unprivileged callers.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Errno::result(rc)?;
    let prog = filter.instructions();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at a well-formed program of `len` instructions that outlives the
    // call; the kernel copies it during the call and never writes through the pointer.
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

    const SECCOMP_DATA_LEN: usize = 64;

    /// The kernel's checks on a seccomp program (kernel/seccomp.c `seccomp_check_filter` and
    /// net/core/filter.c `bpf_check_classic`), for the opcodes the builder uses: every jump
    /// lands inside the program, loads are aligned words inside `seccomp_data`, and the last
    /// instruction returns.
    fn kernel_checks(prog: &[libc::sock_filter]) {
        assert!(!prog.is_empty() && prog.len() <= 4096);
        for (at, i) in prog.iter().enumerate() {
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    assert!(
                        k.is_multiple_of(4) && k + 4 <= SECCOMP_DATA_LEN,
                        "load {k} at {at}"
                    );
                }
                BPF_JEQ_K | BPF_JGE_K => {
                    assert!(
                        at + 1 + (i.jt.max(i.jf) as usize) < prog.len(),
                        "jump at {at}"
                    );
                }
                BPF_AND_K | BPF_RET_K => {}
                other => panic!("opcode {other:#x} at {at}"),
            }
        }
        assert_eq!(prog[prog.len() - 1].code, BPF_RET_K);
    }

    /// A classic-BPF interpreter for the subset the filters use, over a `seccomp_data` of the
    /// given architecture (both are little-endian, so the layout is the same).
    fn run(f: &Filter, nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let prog = f.instructions();
        kernel_checks(prog);
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        assert_eq!(data.len(), SECCOMP_DATA_LEN);
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                    pc += 1;
                }
                BPF_AND_K => {
                    acc &= i.k;
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

    const ARCHES: [Arch; 2] = [X86_64, AARCH64];
    const POLICIES: [Policy; 2] = [Policy::ApiOnly, Policy::Allowlist];
    const EACCES: u32 = RET_ERRNO | libc::EACCES as u32;
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

    fn call(f: &Filter, nr: u32, a0: u64, a1: u64) -> u32 {
        run(f, nr, f.arch.audit, [a0, a1, 0, 0, 0, 0])
    }

    /// Every (architecture, policy) pair, as the kernel of that architecture would see it.
    fn each(mut check: impl FnMut(&Filter)) {
        for arch in ARCHES {
            for policy in POLICIES {
                check(&build(arch, policy));
            }
        }
    }

    /// The hand-written syscall table of the host architecture is libc's.
    #[test]
    fn native_table_matches_libc() {
        let native = NATIVE.expect("tests run on x86-64 or AArch64");
        assert_eq!(native.socket, libc::SYS_socket as u32);
        assert_eq!(native.socketpair, libc::SYS_socketpair as u32);
        assert_eq!(native.io_uring_setup, libc::SYS_io_uring_setup as u32);
        assert_eq!(native.io_uring_enter, libc::SYS_io_uring_enter as u32);
        assert_eq!(native.io_uring_register, libc::SYS_io_uring_register as u32);
        assert_eq!(
            SOCK_FLAGS,
            (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u32
        );
        for (ours, theirs) in [
            (AF_UNIX, libc::AF_UNIX),
            (AF_INET, libc::AF_INET),
            (AF_INET6, libc::AF_INET6),
            (AF_NETLINK, libc::AF_NETLINK),
            (SOCK_STREAM, libc::SOCK_STREAM),
            (SOCK_DGRAM, libc::SOCK_DGRAM),
        ] {
            assert_eq!(ours, theirs as u32);
        }
        assert_eq!(prepare().arch, native);
        assert_eq!(prepare_allowlist().policy, Policy::Allowlist);
    }

    #[test]
    fn shapes() {
        let lens: Vec<usize> = ARCHES
            .iter()
            .flat_map(|a| POLICIES.iter().map(|p| build(*a, *p).len))
            .collect();
        // x86-64 has the x32 check; allowlist has the inet and type checks.
        assert_eq!(lens, [16, 22, 15, 21]);
        each(|f| kernel_checks(f.instructions()));
    }

    /// Families every filter allows, on every architecture.
    #[test]
    fn unix_and_netlink_pass_everywhere() {
        each(|f| {
            for nr in [f.arch.socket, f.arch.socketpair] {
                for fam in [AF_UNIX, AF_NETLINK] {
                    for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_RAW, 5] {
                        assert_eq!(call(f, nr, fam as u64, ty as u64), RET_ALLOW, "{f:?}");
                    }
                }
                // The kernel reads `int family`: garbage in the high half does not matter.
                assert_eq!(call(f, nr, (7 << 32) | AF_UNIX as u64, 1), RET_ALLOW);
            }
        });
    }

    const OTHER_FAMILIES: [i32; 12] = [
        libc::AF_PACKET,
        libc::AF_VSOCK,
        libc::AF_XDP,
        libc::AF_BLUETOOTH,
        libc::AF_TIPC,
        libc::AF_ALG,
        libc::AF_CAN,
        libc::AF_RDS,
        libc::AF_UNSPEC,
        libc::AF_KEY,
        libc::AF_PPPOX,
        255,
    ];

    #[test]
    fn api_only_refuses_every_ip_and_other_family() {
        for arch in ARCHES {
            let f = build(arch, Policy::ApiOnly);
            for nr in [arch.socket, arch.socketpair] {
                for fam in OTHER_FAMILIES
                    .iter()
                    .chain(&[libc::AF_INET, libc::AF_INET6])
                {
                    for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_RAW] {
                        assert_eq!(call(&f, nr, *fam as u64, ty as u64), EACCES, "{fam}");
                    }
                }
                // AF_INET with high bits set is still refused.
                assert_eq!(call(&f, nr, (1 << 32) | AF_INET as u64, 1), EACCES);
            }
        }
    }

    #[test]
    fn allowlist_allows_only_tcp_and_udp_sockets_of_ip() {
        for arch in ARCHES {
            let f = build(arch, Policy::Allowlist);
            for nr in [arch.socket, arch.socketpair] {
                for fam in [libc::AF_INET, libc::AF_INET6] {
                    let fam = fam as u64;
                    for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
                        for flags in [
                            0,
                            libc::SOCK_NONBLOCK,
                            libc::SOCK_CLOEXEC,
                            SOCK_FLAGS as i32,
                        ] {
                            let t = (ty | flags) as u64;
                            assert_eq!(call(&f, nr, fam, t), RET_ALLOW, "{arch:?} {fam} {t:#x}");
                        }
                        // Only the low 32 bits of the type count, like the kernel's `int`.
                        assert_eq!(call(&f, nr, fam, (9 << 32) | ty as u64), RET_ALLOW);
                    }
                    for ty in [
                        libc::SOCK_RAW,
                        libc::SOCK_SEQPACKET,
                        libc::SOCK_RDM,
                        10, // SOCK_PACKET (obsolete)
                        0,
                        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                        // Unknown flag bits are not masked away.
                        libc::SOCK_STREAM | 0x100,
                        libc::SOCK_DGRAM | 0x4000_0000,
                    ] {
                        assert_eq!(
                            call(&f, nr, fam, ty as u64),
                            EACCES,
                            "{arch:?} {fam} {ty:#x}"
                        );
                    }
                }
                for fam in OTHER_FAMILIES {
                    for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_RAW] {
                        assert_eq!(call(&f, nr, fam as u64, ty as u64), EACCES, "{fam}");
                    }
                }
                assert_eq!(call(&f, nr, (1 << 32) | libc::AF_PACKET as u64, 1), EACCES);
            }
        }
    }

    #[test]
    fn io_uring_is_gone() {
        each(|f| {
            let a = f.arch;
            for nr in [a.io_uring_setup, a.io_uring_enter, a.io_uring_register] {
                assert_eq!(call(f, nr, 0, 0), ENOSYS, "{f:?}");
            }
        });
    }

    #[test]
    fn ordinary_syscalls_pass() {
        // read, write, openat, connect, sendto, execve, clone, mmap, exit_group
        let x86 = [0, 1, 257, 42, 44, 59, 56, 9, 231];
        let arm = [63, 64, 56, 203, 206, 221, 220, 222, 94];
        for (arch, nrs) in [(X86_64, x86), (AARCH64, arm)] {
            for policy in POLICIES {
                let f = build(arch, policy);
                for nr in nrs {
                    assert_eq!(call(&f, nr, AF_INET as u64, 3), RET_ALLOW, "{f:?} nr {nr}");
                }
            }
        }
        // The host's own table checks the hand-written numbers of its architecture.
        let host = if NATIVE == Some(X86_64) { x86 } else { arm };
        let libc_nrs = [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_connect,
            libc::SYS_sendto,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_mmap,
            libc::SYS_exit_group,
        ];
        assert_eq!(host, libc_nrs.map(|n| n as u32));
    }

    /// The other ABIs a process of this architecture can reach die, whatever they call:
    /// i386 on x86-64 (socketcall 102, socket 359) and AArch32 on arm64 (socket 281,
    /// socketpair 288, io_uring_setup 425), and each 64-bit program refuses the other's arch.
    #[test]
    fn compat_and_foreign_architectures_die() {
        each(|f| {
            for arch in [
                AUDIT_ARCH_I386,
                AUDIT_ARCH_ARM,
                0,
                f.arch.audit ^ 1,
                if f.arch == X86_64 {
                    AARCH64.audit
                } else {
                    X86_64.audit
                },
            ] {
                for nr in [102, 359, 281, 288, 425, 3, 0, f.arch.socket] {
                    assert_eq!(
                        run(f, nr, arch, [2, 1, 0, 0, 0, 0]),
                        RET_KILL_PROCESS,
                        "{f:?} arch {arch:#x} nr {nr}"
                    );
                }
            }
        });
    }

    #[test]
    fn x32_numbers_die_on_x86_64_only() {
        for policy in POLICIES {
            let f = build(X86_64, policy);
            for nr in [
                X32_SYSCALL_BIT | 41,
                X32_SYSCALL_BIT | 53,
                X32_SYSCALL_BIT,
                u32::MAX,
            ] {
                assert_eq!(call(&f, nr, 2, 1), RET_KILL_PROCESS, "{policy:?} {nr:#x}");
            }
            // AArch64 has no x32 ABI: such a number is just unknown to the kernel (ENOSYS).
            let f = build(AARCH64, policy);
            assert_eq!(call(&f, X32_SYSCALL_BIT | 198, 2, 1), RET_ALLOW);
        }
    }

    #[test]
    fn a_foreign_program_is_never_installed() {
        let native = NATIVE.unwrap();
        let other = if native == X86_64 { AARCH64 } else { X86_64 };
        assert_eq!(install(&build(other, Policy::ApiOnly)), Err(Errno::ENOEXEC));
    }

    /// Needs a real kernel: under qemu-user this is exactly what fails (ENOSYS).
    #[test]
    fn probe_succeeds_on_a_real_kernel() {
        assert_eq!(probe(), Ok(()));
    }

    #[test]
    fn failures_are_explained() {
        let m = explain(Errno::ENOSYS);
        assert!(m.contains("qemu-user") && m.contains("ENOSYS"), "{m}");
        assert!(!m.contains("Docker"), "{m}");
        assert!(explain(Errno::EINVAL).contains("CONFIG_SECCOMP_FILTER"));
        assert!(explain(Errno::EPERM).contains("profile"));
        assert!(Unsupported::Arch.to_string().contains("AArch64"));
    }
}
