"""A process under a seccomp filter that makes getppid() fail with EPERM.

Usage: seccomp_filter.py WORKDIR (nnp|dropped)
  nnp      install with no_new_privs (restorable)
  dropped  install as root without no_new_privs, then drop to uid 1000 with
           no capabilities: the filter could not be installed again.
After the go file appears, checks that the filter still acts and prints
PASS or FAIL.
"""
import ctypes
import os
import struct
import sys
import time

work, how = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
NR_GETPPID = 110
prog = b"".join(
    struct.pack("<HBBI", *insn)
    for insn in [
        (0x20, 0, 0, 0),  # ld [nr]
        (0x15, 0, 1, NR_GETPPID),  # jeq getppid
        (0x06, 0, 0, 0x00050000 | 1),  # ret ERRNO(EPERM)
        (0x06, 0, 0, 0x7FFF0000),  # ret ALLOW
    ]
)
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("<HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
fbuf = ctypes.create_string_buffer(fprog)
if how == "nnp":
    assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fbuf, 0, 0) == 0, ctypes.get_errno()
if how == "dropped":
    os.setgroups([])
    os.setresgid(1000, 1000, 1000)
    os.setresuid(1000, 1000, 1000)
before = libc.syscall(NR_GETPPID), ctypes.get_errno()
print("READY", flush=True)
while not os.path.exists(os.path.join(work, "go")):
    time.sleep(0.01)
ctypes.set_errno(0)
after = libc.syscall(NR_GETPPID), ctypes.get_errno()
status = open("/proc/self/status").read()
ok = before == (-1, 1) and after == (-1, 1) and "Seccomp:\t2" in status and "Seccomp_filters:\t1" in status
print(f"before {before} after {after}")
print("PASS" if ok else "FAIL (filter lost)", flush=True)
