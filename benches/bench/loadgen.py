"""Load that no packaged tool generates the way we need it: many idle
connections held open (memory per connection), and a one-query DNS check."""

import random
import selectors
import socket
import struct
import time

from . import proc


def dns_answers(port, name="bench.test", timeout=1.0):
    """True when 127.0.0.1:`port` answers an A query for `name` over UDP."""
    qid = random.randrange(1 << 16)
    packet = struct.pack(">6H", qid, 0x0100, 1, 0, 0, 0)
    packet += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    packet += struct.pack(">2H", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, ("127.0.0.1", port))
            data = s.recv(4096)
        except OSError:
            return False
    if len(data) < 12:
        return False
    rid, _, _, answers = struct.unpack(">4H", data[:8])
    return rid == qid and answers > 0


def http_get_ok(port, path="/64b", timeout=2.0):
    """True when one HTTP/1.0 GET through 127.0.0.1:`port` answers 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")


class Held:
    """Client connections opened in steps and held idle, to read what the
    proxy keeps per connection as their number grows."""

    def __init__(self, port, deadline):
        self.port = port
        self.deadline = deadline
        self.socks = []
        self.sel = selectors.DefaultSelector()

    def open(self, count):
        """Open `count` more connections (in batches under the listen
        backlog); returns how many connected."""
        fresh = []
        while len(fresh) < count and time.monotonic() < self.deadline:
            batch = []
            for _ in range(min(200, count - len(fresh))):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", self.port))
                self.sel.register(s, selectors.EVENT_WRITE)
                batch.append(s)
            waiting = set(batch)
            while waiting and time.monotonic() < self.deadline:
                for key, _ in self.sel.select(timeout=0.5):
                    self.sel.unregister(key.fileobj)
                    waiting.discard(key.fileobj)
            for s in waiting:
                self.sel.unregister(s)
            fresh += batch
        ok = [s for s in fresh if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
        self.socks += ok
        for s in fresh:
            if s not in ok:
                s.close()
        self.fresh = ok
        return len(ok)

    def fetch(self, path):
        """GET `path` (keep-alive) on the connections opened last and read
        each whole reply; returns how many replies arrived whole."""
        req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        left = {}  # socket -> [header bytes, body bytes still due or None]
        for s in self.fresh:
            try:
                s.send(req)
            except OSError:
                continue
            left[s] = [b"", None]
            self.sel.register(s, selectors.EVENT_READ)
        whole = 0
        buf = bytearray(1 << 18)
        while left and time.monotonic() < self.deadline:
            for key, _ in self.sel.select(timeout=0.5):
                s, st = key.fileobj, left[key.fileobj]
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                if n == 0:
                    self.sel.unregister(s)
                    del left[s]
                    continue
                if st[1] is None:
                    st[0] += bytes(buf[:n])
                    end = st[0].find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    length = 0
                    for line in st[0][:end].split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v)
                    st[1] = length - (len(st[0]) - end - 4)
                else:
                    st[1] -= n
                if st[1] <= 0:
                    self.sel.unregister(s)
                    del left[s]
                    whole += 1
        for s in left:
            self.sel.unregister(s)
        return whole

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []
        self.sel.close()


def memory_steps(pid, port, upstream_port, steps, get=None, hold=1.0, timeout=60.0):
    """Open connections to `port` step by step up to each count in `steps`,
    holding them all; after each step wait until the proxy has its upstream
    connections too, then read the proxy's RSS. With `get`, each new
    connection first fetches that path (a reply through the proxy) and then
    stays idle. Returns (baseline KiB, [(connections, KiB per connection)],
    note)."""
    before_up = proc.established_to(upstream_port)
    base = proc.rss_kib(pid)
    held = Held(port, time.monotonic() + timeout)
    rows, note = [], ""
    try:
        for want in steps:
            opened = held.open(want - len(held.socks))
            if get:
                whole = held.fetch(get)
                if whole < opened:
                    note = f"{opened - whole} of {opened} replies incomplete"
            n = len(held.socks)
            while time.monotonic() < held.deadline:
                if proc.established_to(upstream_port) - before_up >= n:
                    break
                time.sleep(0.1)
            time.sleep(hold)
            if n < want:
                note = f"only {n} of {want} connections opened"
                break
            rows.append((n, round((proc.rss_kib(pid) - base) / n, 2)))
    finally:
        held.close()
    return base, rows, note
