#!/usr/bin/python3
"""A real SMB client (libsmbclient, through ctypes) for what smbclient has no
command for: writing at an offset, appending, truncating to a size.
Usage: smbc_ops.py URL USER PASS OP NAME [ARGS]
  write NAME OFFSET HEXBYTES | truncate NAME SIZE
  or: smbc_ops.py URL USER PASS batch  (one JSON array [OP, NAME, ARGS...] per stdin line)
"""
import ctypes
import json
import urllib.parse
import os
import sys

lib = ctypes.CDLL("libsmbclient.so.0", use_errno=True)
# Output buffers must be c_void_p: c_char_p hands the callback a copy.
AUTH = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                        ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
lib.smbc_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
lib.smbc_lseek.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int]
lib.smbc_lseek.restype = ctypes.c_int64
lib.smbc_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
lib.smbc_write.restype = ctypes.c_ssize_t
lib.smbc_ftruncate.argtypes = [ctypes.c_int, ctypes.c_int64]


def check(rc, what):
    if rc < 0:
        e = ctypes.get_errno()
        sys.exit("%s: %s" % (what, os.strerror(e)))
    return rc


def apply(url, op, name, args):
    # libsmbclient URL-decodes paths: escape % # and friends.
    path = url.rstrip("/") + "/" + urllib.parse.quote(name, safe="/")
    fd = check(lib.smbc_open(path.encode(),
                             os.O_WRONLY, 0o644), "open " + name)
    if op == "write":
        check(lib.smbc_lseek(fd, int(args[0]), os.SEEK_SET), "lseek")
        data = bytes.fromhex(args[1])
        check(lib.smbc_write(fd, data, len(data)), "write")
    elif op == "truncate":
        check(lib.smbc_ftruncate(fd, int(args[0])), "ftruncate")
    else:
        sys.exit("unknown op " + op)
    check(lib.smbc_close(fd), "close")


def init(user, password):
    """Initialises libsmbclient with fixed credentials; keeps the callback alive."""
    def auth(srv, shr, wg, wglen, un, unlen, pw, pwlen):
        ctypes.memmove(un, user.encode() + b"\0", len(user) + 1)
        ctypes.memmove(pw, password.encode() + b"\0", len(password) + 1)

    cb = AUTH(auth)
    check(lib.smbc_init(cb, 0), "smbc_init")
    return cb


def main():
    url, user, password, op = sys.argv[1:5]
    keep = init(user, password)  # noqa: F841 (the C side holds a pointer to it)
    if op == "batch":
        for line in sys.stdin:
            if line.strip():
                step = json.loads(line)
                apply(url, step[0], step[1], [str(a) for a in step[2:]])
    else:
        apply(url, op, sys.argv[5], sys.argv[6:])


if __name__ == "__main__":
    main()
