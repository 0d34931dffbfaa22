#!/usr/bin/python3
"""Opens, writes and closes files through libsmbclient at a steady rate.
Usage: closer.py URL USER PASS RATE SECONDS SIZE; prints the closes done."""
import ctypes
import os
import sys
import time

lib = ctypes.CDLL("libsmbclient.so.0", use_errno=True)
AUTH = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                        ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
lib.smbc_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
lib.smbc_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
lib.smbc_write.restype = ctypes.c_ssize_t

url, user, password = sys.argv[1:4]
rate, seconds, size = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])


def auth(srv, shr, wg, wglen, un, unlen, pw, pwlen):
    ctypes.memmove(un, user.encode() + b"\0", len(user) + 1)
    ctypes.memmove(pw, password.encode() + b"\0", len(password) + 1)


cb = AUTH(auth)
if lib.smbc_init(cb, 0) < 0:
    sys.exit("smbc_init failed")
n = int(rate * seconds)
start = time.monotonic()
for i in range(n):
    due = start + i / rate
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    fd = lib.smbc_open(("%s/f%d.bin" % (url.rstrip("/"), i % 500)).encode(),
                       os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if fd < 0:
        sys.exit("open: %s" % os.strerror(ctypes.get_errno()))
    lib.smbc_write(fd, os.urandom(size), size)
    lib.smbc_close(fd)
print(n, time.monotonic() - start)
