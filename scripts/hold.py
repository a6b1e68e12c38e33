#!/usr/bin/env python3
"""Holds a file open for scripts/test-posix.sh: writes it, optionally unlinks it, says
"ready" (creates DIR/ready), waits for DIR/go, then checks that the open descriptor
still reads, writes, truncates and fstats as it should, whatever happened to the name
meanwhile, and closes it. Exits non-zero with a message on the first wrong answer.

    hold.py FILE DIR [--unlink]
"""
import os
import random
import sys
import time

MIB = 1 << 20


def fail(msg):
    print(f"hold.py {sys.argv[1]}: {msg}", file=sys.stderr)
    sys.exit(1)


def read_all(fd, size):
    # From the file system, not the kernel's page cache.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, MIB))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main():
    path, marks = sys.argv[1], sys.argv[2]
    unlink = "--unlink" in sys.argv[3:]
    data = random.Random(7).randbytes(3 * MIB + 11)
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    if unlink:
        os.unlink(path)
    open(os.path.join(marks, "ready"), "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(marks, "go")):
        if time.monotonic() > deadline:
            fail("no go within 120 s")
        time.sleep(0.05)
    # Another mount's unlink shows in the link count once cached attributes age.
    st = os.fstat(fd)
    if st.st_size != len(data) or (unlink and st.st_nlink != 0):
        fail(f"fstat: nlink {st.st_nlink}, size {st.st_size}; expected 0, {len(data)}")
    if read_all(fd, len(data) + 1) != data:
        fail("read after the name went: wrong bytes")
    more = random.Random(8).randbytes(MIB)
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, more)
    os.fsync(fd)
    if read_all(fd, len(data) + len(more)) != data + more:
        fail("read after a write: wrong bytes")
    os.ftruncate(fd, 2 * MIB + 5)
    os.fsync(fd)
    if os.fstat(fd).st_size != 2 * MIB + 5 or read_all(fd, 3 * MIB) != data[: 2 * MIB + 5]:
        fail("ftruncate: wrong size or bytes")
    os.close(fd)


main()
