#!/usr/bin/python3
"""Opens, writes and closes files through libsmbclient at a steady rate.
Usage: closer.py URL USER PASS RATE SECONDS SIZE; prints the closes done."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "helpers"))
from smbc_ops import check, init, lib  # noqa: E402  (the shared ctypes bindings)

url, user, password = sys.argv[1:4]
rate, seconds, size = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
keep = init(user, password)
n = int(rate * seconds)
start = time.monotonic()
for i in range(n):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    fd = check(lib.smbc_open(("%s/f%d.bin" % (url.rstrip("/"), i % 500)).encode(),
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "open")
    check(lib.smbc_write(fd, os.urandom(size), size), "write")
    check(lib.smbc_close(fd), "close")
print(n, time.monotonic() - start)
