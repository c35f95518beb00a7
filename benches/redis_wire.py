"""A private redis-server and a bare RESP connection for the bench scripts (no client library:
they run with Python's standard library alone)."""
import os
import socket
import subprocess
import sys
import tempfile
import time


def resp(*args):
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.s.recv(1 << 16)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError("unexpected reply %r" % line)

    def call(self, *args):
        self.s.sendall(resp(*args))
        return self.reply()

    def pipeline(self, commands):
        self.s.sendall(b"".join(resp(*c) for c in commands))
        return [self.reply() for _ in commands]


def start_redis(prefix, wrap=(), timeout=30):
    """redis-server without persistence on a free port in a folder of its own, `wrap` (e.g.
    valgrind) in front: (process, connection, folder, port)."""
    work = tempfile.mkdtemp(prefix=prefix)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [*[w.replace("{work}", work) for w in wrap], "redis-server", "--port", str(port),
         "--save", "", "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while True:
        try:
            conn = Conn(port)
            conn.call("PING")
            return process, conn, work, port
        except OSError:
            if time.time() > deadline:
                process.terminate()
                sys.exit("redis-server did not start in %d s" % timeout)
            time.sleep(0.2)
