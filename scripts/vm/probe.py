"""The api-only checks, run inside the aarch64 VM as bottle-init's child: uid 1000, dropped,
under the seccomp filter, as an attacker inside claude would try. One `VMCHECK ok|FAIL name`
line each; exits 1 if any failed (bottle-init passes the status on)."""
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys

failed = 0


def check(name, ok, detail=""):
    global failed
    failed += not ok
    print(f"VMCHECK {'ok' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail else ""), flush=True)


def errname(e):
    return errno.errorcode.get(e, str(e))


status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
field = lambda k: status[k].strip()
check("child is uid 1000", field("Uid").split() == ["1000"] * 4, field("Uid"))
check("child has no capabilities",
      all(field(k) == "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")))
check("child has no_new_privs", field("NoNewPrivs") == "1")
check("child runs under a seccomp filter", field("Seccomp") == "2", field("Seccomp"))

for name, family, kind in [
    ("AF_INET stream", socket.AF_INET, socket.SOCK_STREAM),
    ("AF_INET datagram", socket.AF_INET, socket.SOCK_DGRAM),
    ("AF_INET raw", socket.AF_INET, socket.SOCK_RAW),
    ("AF_INET6 stream", socket.AF_INET6, socket.SOCK_STREAM),
    ("AF_INET6 datagram", socket.AF_INET6, socket.SOCK_DGRAM),
    ("AF_PACKET raw", socket.AF_PACKET, socket.SOCK_RAW),
]:
    try:
        socket.socket(family, kind).close()
        check(f"{name} socket is refused with EACCES", False, "it was created")
    except OSError as e:
        check(f"{name} socket is refused with EACCES", e.errno == errno.EACCES, errname(e.errno))

# io_uring_setup is syscall 425 in the generic table aarch64 uses.
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
ret = libc.syscall(425, 8, params)
err = ctypes.get_errno()
check("io_uring_setup fails with ENOSYS", ret == -1 and err == errno.ENOSYS, f"ret {ret}, {errname(err)}")

a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
a.sendall(b"ping")
check("AF_UNIX socketpair works", b.recv(4) == b"ping")
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
    check("AF_NETLINK socket works", True)
except OSError as e:
    check("AF_NETLINK socket works", False, errname(e.errno))

for path in ("/proc/1/environ", "/proc/1/mem", "/vm/token"):
    try:
        open(path, "rb").read(1)
        check(f"{path} is refused", False, "readable")
    except PermissionError:
        check(f"{path} is refused", True)

placeholder = os.environ.get("CLAUDE_CODE_OAUTH_TOKEN", "")
check("the child holds a placeholder credential", placeholder.startswith("bottle-"))
api = os.environ.get("ANTHROPIC_UNIX_SOCKET", "")


def api_call(secret):
    body = b'{"model":"vm","max_tokens":8,"messages":[{"role":"user","content":"hello from the vm"}]}'
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {secret}\r\n"
            f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(api)
    s.sendall(head + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


try:
    resp = api_call(placeholder)
    check("the API answers over the Unix socket", resp.startswith(b"HTTP/1.1 200") and b"vm-mock-reply" in resp,
          resp.split(b"\r\n", 1)[0].decode(errors="replace"))
    resp = api_call("bottle-" + "0" * 64)
    check("a wrong session secret gets 401", resp.startswith(b"HTTP/1.1 401"),
          resp.split(b"\r\n", 1)[0].decode(errors="replace"))
except OSError as e:
    check("the API answers over the Unix socket", False, f"{api}: {e}")

r = subprocess.run(["/vm/compat-probe"], capture_output=True)
check("an AArch32 (compat) program is killed with SIGSYS", r.returncode == -signal.SIGSYS,
      f"returncode {r.returncode}, output {r.stdout!r}")
sys.exit(1 if failed else 0)
