"""TLS load for the tls suite, run as its own process so that its CPU is the
client's, not the proxy's:

  python3 -m bench.tlsclient hs     --port P --sni NAME --clients N --seconds S
  python3 -m bench.tlsclient resume --port P --sni NAME --clients N --seconds S
  python3 -m bench.tlsclient bulk up|down --port P --sni NAME --streams N --seconds S
  python3 -m bench.tlsclient check  --port P --sni NAME

Each prints one JSON line; `--tls 1.2|1.3` pins the version. `hs` makes full
handshakes only (no tickets offered, no session reuse), reads the backend's
3-byte reply through the proxy, and closes. `resume` offers the session of
its previous connection (the newest ticket it was given), makes one HTTP
request (`Connection: close`, a backend answering "ok\n"), and counts the
handshakes the server resumed (`session_reused`) and those it did in full.
`hold` (imported, not a mode) opens connections and keeps them.
"""

import argparse
import json
import multiprocessing
import socket
import ssl
import sys
import time

REPLY = b"ok\n"
REQUEST = b"GET /ok HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def context(version, tickets=False):
    """A client context pinned to TLS `version` ("1.2" or "1.3")."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # a self-signed certificate made for the run
    ctx.verify_mode = ssl.CERT_NONE
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    return ctx


def dial(ctx, port, sni, session=None):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except BaseException:
        raw.close()
        raise


def read_reply(s):
    got = b""
    while len(got) < len(REPLY):
        chunk = s.recv(64)
        if not chunk:
            break
        got += chunk
    return got


def exchange(s, request):
    """Send `request`, read until the reply ends in REPLY; True if it does."""
    s.sendall(request)
    got = b""
    while not got.endswith(REPLY):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got.endswith(REPLY)


def handshakes(job):
    port, sni, version, start, stop = job
    ctx = context(version)
    done = failed = 0
    time.sleep(max(0.0, start - time.time()))
    while time.time() < stop:
        try:
            s = dial(ctx, port, sni)
            ok = read_reply(s) == REPLY
            s.close()
        except (OSError, ValueError):
            ok = False
        if ok:
            done += 1
        else:
            failed += 1
            time.sleep(0.01)
    return done, failed, time.time() - start


def resumptions(job):
    """One client of `resume`: (resumed, full, failed, seconds)."""
    port, sni, version, start, stop = job
    ctx = context(version, tickets=True)
    resumed = full = failed = 0
    session = None
    time.sleep(max(0.0, start - time.time()))
    while time.time() < stop:
        try:
            s = dial(ctx, port, sni, session)
            ok = exchange(s, REQUEST)
            reused = s.session_reused
            # read after the reply: a TLS 1.3 ticket arrives after the handshake
            session = s.session if ok else None
            s.close()
        except (OSError, ValueError):
            ok, session = False, None
        if not ok:
            failed += 1
            time.sleep(0.01)
        elif reused:
            resumed += 1
        else:
            full += 1
    return resumed, full, failed, time.time() - start


def hold(port, sni, version, count, request, deadline):
    """Open `count` TLS connections one after the other, send `request` on
    each and read until the reply ends in REPLY; returns the connections
    that got their reply, left open (the caller closes them)."""
    ctx = context(version)
    held = []
    while len(held) < count and time.monotonic() < deadline:
        try:
            s = dial(ctx, port, sni)
        except (OSError, ValueError):
            time.sleep(0.01)
            continue
        try:
            ok = exchange(s, request)
        except (OSError, ValueError):
            ok = False
        if ok:
            held.append(s)
        else:
            s.close()
    return held


def bulk(job):
    direction, port, sni, version, start, stop = job
    buf = bytearray(256 * 1024)
    moved = 0
    try:
        s = dial(context(version), port, sni)
    except OSError as e:
        return 0, 1, 0.0, str(e)
    err = ""
    try:
        if direction == "down":
            while time.time() < start:  # bytes before the start are not counted
                s.recv_into(buf)
        else:
            time.sleep(max(0.0, start - time.time()))
        view = memoryview(buf)
        while time.time() < stop:
            if direction == "up":
                s.sendall(view)
                moved += len(view)
            else:
                n = s.recv_into(buf)
                if not n:
                    raise OSError("the proxy closed the connection")
                moved += n
    except OSError as e:
        err = str(e)
    elapsed = time.time() - start
    s.close()
    return moved, 1 if err else 0, elapsed, err


def parallel(fn, jobs):
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        return pool.map(fn, jobs)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["hs", "resume", "bulk", "check"])
    ap.add_argument("direction", nargs="?", choices=["up", "down"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sni", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--tls", default="1.3")
    a = ap.parse_args()
    start = time.time() + 0.5  # every process connects, then all start together
    stop = start + a.seconds
    try:
        if a.mode == "check":
            s = dial(context(a.tls), a.port, a.sni)
            ok = read_reply(s) == REPLY
            out = {"ok": ok, "version": s.version(), "cipher": s.cipher()[0]}
            s.close()
        elif a.mode == "resume":
            res = parallel(resumptions, [(a.port, a.sni, a.tls, start, stop)] * a.clients)
            resumed, full = sum(r[0] for r in res), sum(r[1] for r in res)
            secs = max(r[3] for r in res)
            out = {"resumed": resumed, "full": full, "errors": sum(r[2] for r in res),
                   "handshakes": resumed + full, "rate": round(resumed / secs, 1),
                   "resumed_pct": round(100 * resumed / max(1, resumed + full), 2)}
        elif a.mode == "hs":
            res = parallel(handshakes, [(a.port, a.sni, a.tls, start, stop)] * a.clients)
            done = sum(r[0] for r in res)
            out = {"handshakes": done, "errors": sum(r[1] for r in res),
                   "rate": round(done / max(r[2] for r in res), 1)}
        else:
            if not a.direction:
                ap.error("bulk needs up or down")
            res = parallel(bulk, [(a.direction, a.port, a.sni, a.tls, start, stop)] * a.streams)
            out = {"bytes": sum(r[0] for r in res), "errors": sum(r[1] for r in res),
                   "mbps": round(sum(r[0] / r[2] for r in res if r[2] > 0) / 1e6, 1),
                   "messages": [r[3] for r in res if r[3]]}
    except (OSError, ValueError) as e:
        print(json.dumps({"error": str(e)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
