#!/usr/bin/env python3
"""Route-scale benchmark of apisix-stream's write path.

For each route count it starts a fresh server (local store in a temporary
directory, or, with `--store etcd`, a throwaway etcd on loopback ephemeral
ports), loads that many stream routes through the Admin API with
keep-alive clients, then measures:

- load rate: PUT/s while loading (concurrent keep-alive clients);
- PUT p50/p99: updates of existing routes, one client, one at a time;
- apply latency: time from a PUT's 2xx to the first connection served by
  the new upstream (a route for 127.0.0.1 switched between two backends);
- RSS after loading, and again after the update churn; per route, the
  growth over the empty server's RSS.

Usage: benches/routes.py --bin target/release/apisix-stream [--routes 1000 10000]
                         [--store local|etcd|both]
Prints one table row per route count and the targets each row meets.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

KEY = "bench-admin-key-0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def backend(greeting):
    """A TCP server that writes `greeting` and closes each connection."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)

    def run():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            try:
                c.sendall(greeting.encode() + b"\n")
            except OSError:
                pass
            c.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1]


def config(data, admin, control, tcp, etcd_url=None):
    provider = "etcd" if etcd_url else "local"
    etcd = (
        f"""  etcd:
    host:
      - "{etcd_url}"
    prefix: /apisix
    timeout: 30
"""
        if etcd_url
        else ""
    )
    return f"""apisix:
  proxy_mode: stream
  stream_proxy:
    tcp:
      - 127.0.0.1:{tcp}
  enable_control: true
  control:
    ip: 127.0.0.1
    port: {control}
deployment:
{etcd}  role: traditional
  role_traditional:
    config_provider: {provider}
  local:
    data_dir: "{data}"
  admin:
    admin_key:
      - name: admin
        key: {KEY}
        role: admin
    admin_listen:
      ip: 127.0.0.1
      port: {admin}
    allow_admin:
      - 127.0.0.0/24
plugin_attr:
  prometheus:
    export_addr:
      ip: 127.0.0.1
      port: {free_port()}
"""


class Admin:
    """One keep-alive Admin API connection."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def put(self, rid, body):
        data = json.dumps(body)
        for attempt in range(2):
            try:
                self.conn.request(
                    "PUT",
                    f"/apisix/admin/stream_routes/{rid}",
                    body=data,
                    headers={"X-API-KEY": KEY, "Content-Type": "application/json"},
                )
                res = self.conn.getresponse()
                res.read()
                return res.status
            except (ConnectionError, http.client.HTTPException):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return 0


def route(i, port):
    """A route that no benchmark client matches (one /32 per route)."""
    return {
        "remote_addr": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{port}": 1 + i % 7}},
    }


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def greeting(port):
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        out = b""
        while not out.endswith(b"\n"):
            b = s.recv(64)
            if not b:
                break
            out += b
        return out.decode().strip()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def wait_port(port, proc, secs=600):
    end = time.time() + secs
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} not listening after {secs}s")


def start_etcd(tmp, etcd_bin):
    """A throwaway single-member etcd on loopback ephemeral ports."""
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = open(os.path.join(tmp, "etcd.log"), "w")
    proc = subprocess.Popen(
        [
            etcd_bin,
            "--data-dir", os.path.join(tmp, "etcd"),
            "--name", "bench",
            "--listen-client-urls", url,
            "--advertise-client-urls", url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"bench={peer_url}",
        ],
        stdout=log,
        stderr=log,
    )
    end = time.time() + 30
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"etcd exited with {proc.returncode} (see {tmp}/etcd.log)")
        try:
            with socket.create_connection(("127.0.0.1", client), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                if b'"health":"true"' in s.recv(4096):
                    return proc, url
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit("etcd not healthy within 30 s")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(binary, n, clients, churn, applies, store="local", etcd_bin="etcd"):
    tmp = tempfile.mkdtemp(prefix="routes-bench-")
    etcd, etcd_url = start_etcd(tmp, etcd_bin) if store == "etcd" else (None, None)
    admin, control, tcp = free_port(), free_port(), free_port()
    cfg = os.path.join(tmp, "config.yaml")
    with open(cfg, "w") as f:
        f.write(config(os.path.join(tmp, "data"), admin, control, tcp, etcd_url))
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen([binary, "serve", "-c", cfg], stdout=log, stderr=log)
    try:
        wait_port(admin, proc)
        a_port, b_port = backend("A"), backend("B")
        rss_empty = rss_kib(proc.pid)

        # Load n routes with `clients` keep-alive connections.
        def loader(k, failures):
            c = Admin(admin)
            for i in range(k, n, clients):
                if c.put(f"r{i}", route(i, a_port)) not in (200, 201):
                    failures.append(i)

        failures = []
        t0 = time.time()
        threads = [threading.Thread(target=loader, args=(k, failures)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_s = time.time() - t0
        if failures:
            sys.exit(f"{len(failures)} PUTs failed while loading")
        rss_loaded = rss_kib(proc.pid)

        # Update churn: one client, one PUT at a time.
        c = Admin(admin)
        lat = []
        for j in range(churn):
            i = (j * 7919) % n
            body = route(i, a_port)
            body["upstream"]["nodes"] = {f"127.0.0.1:{a_port}": 1 + j % 5}
            t = time.perf_counter()
            status = c.put(f"r{i}", body)
            lat.append((time.perf_counter() - t) * 1000)
            if status not in (200, 201):
                sys.exit(f"update PUT answered {status}")
        rss_churned = rss_kib(proc.pid)

        # Apply latency: switch the 127.0.0.1 route between two backends.
        apply = []
        for j in range(applies):
            want, port = ("A", a_port) if j % 2 else ("B", b_port)
            body = {"remote_addr": "127.0.0.1", "upstream": {"nodes": {f"127.0.0.1:{port}": 1}}}
            if c.put("probe", body) not in (200, 201):
                sys.exit("probe PUT failed")
            t = time.perf_counter()
            while greeting(tcp) != want:
                if time.perf_counter() - t > 10:
                    sys.exit("probe route not applied within 10 s")
            apply.append((time.perf_counter() - t) * 1000)

        return {
            "store": store,
            "routes": n,
            "put_p50_ms": round(pct(lat, 50), 2),
            "put_p99_ms": round(pct(lat, 99), 2),
            "apply_p50_ms": round(pct(apply, 50), 2),
            "apply_max_ms": round(max(apply), 2),
            "load_put_per_s": round(n / load_s),
            "rss_mib_loaded": round(rss_loaded / 1024, 1),
            "rss_mib_after_churn": round(rss_churned / 1024, 1),
            "rss_mib_empty": round(rss_empty / 1024, 1),
            "kib_per_route": round((rss_churned - rss_empty) / n, 2),
        }
    finally:
        stop(proc)
        if etcd:
            stop(etcd)
        subprocess.run(["rm", "-rf", tmp], check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/apisix-stream")
    ap.add_argument("--routes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--churn", type=int, default=500)
    ap.add_argument("--applies", type=int, default=20)
    ap.add_argument("--store", choices=["local", "etcd", "both"], default="local")
    ap.add_argument("--etcd-bin", default="etcd", help="etcd program for --store etcd")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = []
    stores = ["local", "etcd"] if args.store == "both" else [args.store]
    print("| store | routes | PUT p50 | PUT p99 | apply p50 / max | load PUT/s | RSS empty | RSS loaded | RSS after churn | KiB/route |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for store, n in [(st, n) for st in stores for n in args.routes]:
        r = run(args.bin, n, args.clients, args.churn, args.applies, store, args.etcd_bin)
        rows.append(r)
        print(
            f"| {store} | {n} | {r['put_p50_ms']} ms | {r['put_p99_ms']} ms | "
            f"{r['apply_p50_ms']} / {r['apply_max_ms']} ms | {r['load_put_per_s']} | "
            f"{r['rss_mib_empty']} MiB | {r['rss_mib_loaded']} MiB | "
            f"{r['rss_mib_after_churn']} MiB | {r['kib_per_route']} |",
            flush=True,
        )
        met = {
            "put_p99<=20ms": r["put_p99_ms"] <= 20,
            "apply<=50ms": r["apply_max_ms"] <= 50,
            "load>=1000/s": r["load_put_per_s"] >= 1000,
        }
        if n >= 100_000:
            # The memory target is per route at 100,000 routes; smaller
            # counts mostly show the server's fixed memory.
            met["<=4KiB/route"] = r["kib_per_route"] <= 4
        print("  targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
