#!/usr/bin/env python3
"""Byte-range locks for scripts/test-posix.sh, one step per call, each reporting through
files in DIR so that the shell can wait for it:

    locks.py hold PATH START LEN DIR      lock (exclusive), create DIR/locked, wait for
                                          DIR/unlock, write the time to DIR/unlocked_at
                                          and unlock
    locks.py try PATH START LEN           exit 0 if an exclusive lock is free now, 3 if
                                          another owner holds it
    locks.py wait PATH START LEN DIR      wait for an exclusive lock, then write the time
                                          to DIR/acquired_at
    locks.py interrupt PATH               wait for an exclusive lock of the whole file with
                                          a SIGALRM due in 1 s: print "interrupted" if the
                                          signal ended the wait, "got" if granted
    locks.py cycle PATH DIR NAME MINE THEIRS
                                          lock byte MINE, create DIR/NAME-ready, wait for
                                          DIR/go, then wait for byte THEIRS: print
                                          "deadlock" if refused with EDEADLK, else "got"
    locks.py lapse PATH DIR               lock the whole file, create DIR/locked, wait for
                                          DIR/go, then write: print "eio" if refused with
                                          EIO (the lock was lost), else "wrote"
    locks.py sqlite DB WHO ROWS           insert ROWS rows, one transaction each
"""
import errno
import fcntl
import os
import signal
import sys
import time


def wait_for(path, seconds=120):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"locks.py: {path} did not appear within {seconds} s")
        time.sleep(0.02)


def stamp(path):
    with open(path, "w") as f:
        f.write(repr(time.time()))


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "sqlite":
        import sqlite3

        who, rows = sys.argv[3], int(sys.argv[4])
        con = sqlite3.connect(path, timeout=60)
        try:
            for i in range(rows):
                con.execute("insert into t (who, n) values (?, ?)", (who, i))
                con.commit()
        except sqlite3.Error as e:
            # The extended code names the call that failed (SQLITE_IOERR_FSYNC, ...).
            sys.exit(f"locks.py: {who}: row {i}: {e} ({getattr(e, 'sqlite_errorname', '?')})")
        con.close()
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if cmd == "hold":
        start, length, marks = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        fcntl.lockf(fd, fcntl.LOCK_EX, length, start)
        open(os.path.join(marks, "locked"), "w").close()
        wait_for(os.path.join(marks, "unlock"))
        stamp(os.path.join(marks, "unlocked_at"))
        fcntl.lockf(fd, fcntl.LOCK_UN, length, start)
    elif cmd == "try":
        start, length = int(sys.argv[3]), int(sys.argv[4])
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                sys.exit(3)
            raise
    elif cmd == "wait":
        start, length, marks = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        fcntl.lockf(fd, fcntl.LOCK_EX, length, start)
        stamp(os.path.join(marks, "acquired_at"))
    elif cmd == "interrupt":

        class Alarm(Exception):
            pass

        def ring(_signum, _frame):
            raise Alarm()

        signal.signal(signal.SIGALRM, ring)
        signal.alarm(1)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            print("got")
        except Alarm:
            print("interrupted")
    elif cmd == "cycle":
        marks, name, mine, theirs = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, mine)
        open(os.path.join(marks, f"{name}-ready"), "w").close()
        wait_for(os.path.join(marks, "go"))
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, theirs)
            print("got")
        except OSError as e:
            if e.errno != errno.EDEADLK:
                raise
            print("deadlock")
    elif cmd == "lapse":
        marks = sys.argv[3]
        fcntl.lockf(fd, fcntl.LOCK_EX)
        open(os.path.join(marks, "locked"), "w").close()
        wait_for(os.path.join(marks, "go"))
        try:
            os.pwrite(fd, b"after the lease", 0)
            print("wrote")
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            print("eio")
    else:
        sys.exit(f"locks.py: unknown step {cmd}")
    os.close(fd)


main()
