"""kubectl exec -it driven through a real terminal: a pseudo-terminal 100 columns by 30 rows
runs the command line given, and this types into it as a person would: it waits for the
shell's prompt, runs `stty size` and a command, reads their output, and exits the shell with
code 5. Prints one JSON object: what the terminal showed, and how the command line exited.

usage: kube_tty.py COMMAND [ARG...]
"""
import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time

pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    os.execvp(sys.argv[1], sys.argv[1:])

screen = b""


def read_until(needle, timeout=20.0):
    """Reads the terminal until `needle` shows (True) or the time runs out (False)."""
    global screen
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return False
        if not chunk:
            return False
        screen += chunk
        if needle in screen:
            return True
    return False


out = {"prompt": read_until(b"# ")}
os.write(fd, b"stty size\r")
out["size"] = read_until(b"30 100")
os.write(fd, b"echo typed-$((6*7))\r")
out["typed"] = read_until(b"typed-42")
os.write(fd, b"exit 5\r")
read_until(b"\x00", timeout=5)
_, status = os.waitpid(pid, 0)
out["exit"] = os.waitstatus_to_exitcode(status)
out["screen"] = screen.decode("utf-8", "replace")
print(json.dumps(out))
