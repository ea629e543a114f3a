"""TLS load for the tls suite, run as its own process so that its CPU is the
client's, not the proxy's:

  python3 -m bench.tlsclient hs   --port P --sni NAME --clients N --seconds S
  python3 -m bench.tlsclient bulk up|down --port P --sni NAME --streams N --seconds S
  python3 -m bench.tlsclient check --port P --sni NAME

Each prints one JSON line. `hs` makes full handshakes only (a fresh context
per connection, no tickets, no session reuse), reads the backend's 3-byte
reply through the proxy, and closes.
"""

import argparse
import json
import multiprocessing
import socket
import ssl
import sys
import time

REPLY = b"ok\n"


def context(tls_max):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # a self-signed certificate made for the run
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_TICKET
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = (ssl.TLSVersion.TLSv1_3 if tls_max == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    return ctx


def dial(ctx, port, sni):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname=sni)


def read_reply(s):
    got = b""
    while len(got) < len(REPLY):
        chunk = s.recv(64)
        if not chunk:
            break
        got += chunk
    return got


def handshakes(job):
    port, sni, tls_max, start, stop = job
    ctx = context(tls_max)
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


def bulk(job):
    direction, port, sni, tls_max, start, stop = job
    buf = bytearray(256 * 1024)
    moved = 0
    try:
        s = dial(context(tls_max), port, sni)
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
    ap.add_argument("mode", choices=["hs", "bulk", "check"])
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
