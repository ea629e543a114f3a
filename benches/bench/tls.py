"""The TLS suite, per TLS version (each proxy restarted pinned to it):
T1 full handshakes per second and proxy CPU per handshake for RSA-2048,
RSA-4096 and ECDSA P-256 certificates; T4 resumed handshakes (new
connections offering the session of the previous one); and, at the first
version, T5 memory per idle TLS connection and T2/T3 bulk TLS in both
directions with proxy CPU per GB. Every proxy terminates TLS on 127.0.0.1
with the same self-signed certificates and relays plain bytes to loopback
backends. T1 listeners resume nothing (nginx: no cache, no tickets; HAProxy:
no cache, `no-tls-tickets`; clients offer no ticket); T4 listeners resume as
operators configure it (nginx: `ssl_session_cache shared:SSL:10m` and
tickets; HAProxy: tickets, no cache; apisix-stream: its defaults, tickets). T4's load
is wrk (C, OpenSSL) making one HTTP request per new TLS connection, each
offering the session of the connection before; that the sessions really
resume is checked by a python3 `ssl` client (`session_reused`) and, for
apisix-stream, by its own counters of full and resumed handshakes."""

import json
import os
import subprocess
import sys
import time

from . import proc, tlsclient
from .proc import Failed
from .results import Metric
from .rounds import LOAD_METRICS, run_rounds
from .targets import ApisixStream, nginx_stream_module, start_nginx

HERE = os.path.dirname(os.path.abspath(__file__))
WRK_SCRIPT = os.path.join(HERE, "wrk-summary.lua")
KEYS = {"rsa": "RSA-2048", "rsa4096": "RSA-4096", "ecdsa": "ECDSA P-256"}
NEWKEY = {"rsa": ["rsa:2048"], "rsa4096": ["rsa:4096"],
          "ecdsa": ["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]}
VERSIONS = ["1.3", "1.2"]
HOLD_REQUEST = b"GET /ok HTTP/1.1\r\nHost: bench\r\n\r\n"
# what `run.sh --smoke` (T4 only, ECDSA, TLS 1.3) must have written
SMOKE_ROWS = [("tls", f"t4_tls13_{k}", "apisix-stream")
              for k in ("resumed_per_s", "cpu_us_per_handshake", "resumed_pct",
                        "server_resumed_pct")]


def vkey(version):
    return "tls" + version.replace(".", "")


def metrics(keys, versions):
    """The rows of the suite for these key types and TLS versions."""
    out = []
    for k in keys:
        for v in versions:
            what = f"{KEYS[k]}, TLS {v}"
            out += [
                Metric(f"t1_{k}_{vkey(v)}_handshakes_per_s", f"T1 full handshakes, {what}",
                       "per s", "higher"),
                Metric(f"t1_{k}_{vkey(v)}_cpu_us_per_handshake",
                       f"T1 proxy CPU per handshake, {what}", "us", "lower", True),
            ]
    for v in versions:
        out += [
            Metric(f"t4_{vkey(v)}_resumed_per_s",
                   f"T4 resumed handshakes, TLS {v}", "per s", "higher"),
            Metric(f"t4_{vkey(v)}_cpu_us_per_handshake",
                   f"T4 proxy CPU per resumed handshake, TLS {v}", "us", "lower", True),
            Metric(f"t4_{vkey(v)}_resumed_pct", f"T4 handshakes resumed (client's count), TLS {v}",
                   "%", "info"),
            Metric(f"t4_{vkey(v)}_server_resumed_pct",
                   f"T4 handshakes resumed (apisix-stream's stats), TLS {v}", "%", "info", True),
        ]
    first = versions[0]
    out += [
        Metric("t5_idle_kib_per_conn", f"T5 memory per idle TLS connection, TLS {first}",
               "KiB", "lower", True),
        Metric("t5_idle_base_mib", "T5 RSS before the connections", "MiB", "lower", True),
        Metric("t2_upload_mbps", f"T2 bulk TLS upload (client to backend), TLS {first}",
               "MB/s", "higher"),
        Metric("t2_cpu_ms_per_gb", "T2 proxy CPU per GB", "ms", "lower", True),
        Metric("t3_download_mbps", f"T3 bulk TLS download (backend to client), TLS {first}",
               "MB/s", "higher"),
        Metric("t3_cpu_ms_per_gb", "T3 proxy CPU per GB", "ms", "lower", True),
        Metric("errors", "failed connections / handshakes", "count", "lower"),
    ] + LOAD_METRICS
    return out


class Run:
    """One run of the TLS suite."""

    def __init__(self, ctx, suite, progress):
        self.ctx, self.suite, self.progress = ctx, suite, progress
        self.d = ctx.tls_duration
        self.p = ctx.ports
        self.keys, self.versions = ctx.tls_keys, ctx.tls_versions
        self.bulk_key = "rsa" if "rsa" in self.keys else self.keys[0]
        self.only_t4 = ctx.smoke  # a smoke run touches T4 and nothing else
        self.certs = {}
        self.negotiated = {}

    def steps(self, t):
        """Estimated seconds of each step through target `t`."""
        out = []
        if self.only_t4:
            return [3.0, self.d + 5] * len(self.versions)
        for i, _ in enumerate(self.versions):
            out.append(3.0)
            if i == 0:
                out.append(4 + self.ctx.tls_idle_conns / 300)
            out += [self.d + 2.5] * (len(self.keys) + (2 if i == 0 else 0)) + [self.d + 5]
        return out

    def plan(self):
        for _ in range(self.ctx.rounds):
            for t in self.suite.targets:
                for s in self.steps(t):
                    self.progress.add(s)

    # -------------------------------------------------------------- set-up
    def make_certs(self):
        d = os.path.join(self.ctx.work, "cert")
        os.makedirs(d, exist_ok=True)
        for kind in self.keys:
            key, crt = os.path.join(d, f"{kind}.key"), os.path.join(d, f"{kind}.crt")
            name = f"{kind}.bench.test"
            proc.run(["openssl", "req", "-x509", "-newkey", *NEWKEY[kind], "-nodes",
                      "-days", "2", "-subj", f"/CN={name}", "-addext",
                      f"subjectAltName=DNS:{name}", "-keyout", key, "-out", crt], 60)
            pem = os.path.join(d, f"{kind}.pem")  # haproxy wants both in one file
            with open(pem, "w") as f:
                f.write(open(crt).read() + open(key).read())
            self.certs[kind] = (crt, key, pem, name)

    def start_backends(self):
        modules = nginx_stream_module()
        p = self.p
        start_nginx(self.ctx.procs, self.ctx.work, "backend-reply",
                    f'stream {{ server {{ listen 127.0.0.1:{p.b_reply} reuseport '
                    f'backlog=4096; return "ok\\n"; }} }}',
                    tcp=[p.b_reply], modules=modules)
        # held connections: a keep-alive HTTP reply that leaves them open
        start_nginx(self.ctx.procs, self.ctx.work, "backend-keep", f"""http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  server {{ listen 127.0.0.1:{p.b_keep} backlog=4096; location / {{ return 200 "ok\\n"; }} }}
}}""", tcp=[p.b_keep])
        if self.only_t4:
            return
        procs = self.ctx.procs
        s = procs.start("backend-sink", [
            "socat", "-u", "-b", "262144",
            f"TCP-LISTEN:{p.b_sink},bind=127.0.0.1,fork,reuseaddr,backlog=1024",
            "OPEN:/dev/null"])
        proc.wait_listening(s, tcp=[p.b_sink])
        s = procs.start("backend-source", [
            "socat", "-u", "-b", "262144", "OPEN:/dev/zero",
            f"TCP-LISTEN:{p.b_source},bind=127.0.0.1,fork,reuseaddr,backlog=1024"])
        proc.wait_listening(s, tcp=[p.b_source])

    def hs_port(self, kind):
        return {"rsa": self.p.f_hs_rsa, "rsa4096": self.p.f_hs_rsa4096,
                "ecdsa": self.p.f_hs_ecdsa}[kind]

    def fronts(self):
        """(front port, backend port, key kind, resumes) of every TLS listener."""
        p, k0 = self.p, self.keys[0]
        out = [(self.hs_port(k), p.b_reply, k, False) for k in self.keys]
        out += [(p.f_resume, p.b_keep, k0, True), (p.f_hold, p.b_keep, k0, False),
                (p.f_up, p.b_sink, self.bulk_key, False),
                (p.f_down, p.b_source, self.bulk_key, False)]
        return out

    def start_proxy(self, t, version, tickets=True):
        """Start target `t` pinned to TLS `version`. nginx and HAProxy set
        tickets per listener (on only for T4's); apisix-stream's are a
        process-wide setting, so it runs without them (`tickets=False`)
        for T1, T2, T3 and T5 and with them for T4."""
        ports = [f for f, *_ in self.fronts()]
        if t == "nginx":
            servers = []
            for f, b, k, resumes in self.fronts():
                session = ("ssl_session_cache shared:SSL:10m; ssl_session_tickets on;" if resumes
                           else "ssl_session_cache off; ssl_session_tickets off;")
                servers.append(
                    f"  server {{ listen 127.0.0.1:{f} ssl reuseport backlog=4096; "
                    f"ssl_certificate {self.certs[k][0]}; "
                    f"ssl_certificate_key {self.certs[k][1]}; {session} "
                    f"proxy_pass 127.0.0.1:{b}; }}")
            return start_nginx(self.ctx.procs, self.ctx.work, "nginx-tls", f"""stream {{
  ssl_protocols TLSv{version};
{chr(10).join(servers)}
}}""", tcp=ports, modules=nginx_stream_module())
        if t == "haproxy":
            cfg = os.path.join(self.ctx.work, "haproxy-tls.cfg")
            body = [f"global\n  nbthread {self.ctx.cpus}\n  tune.ssl.cachesize 0\n"
                    f"  ssl-default-bind-options ssl-min-ver TLSv{version} "
                    f"ssl-max-ver TLSv{version}\n"
                    "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n"
                    "  timeout server 600s"]
            for i, (f, b, k, resumes) in enumerate(self.fronts()):
                tickets = "" if resumes else " no-tls-tickets"
                body.append(f"listen tls{i}\n  bind 127.0.0.1:{f} ssl crt {self.certs[k][2]}"
                            f"{tickets}\n  server s1 127.0.0.1:{b}")
            with open(cfg, "w") as fh:
                fh.write("\n".join(body) + "\n")
            h = self.ctx.procs.start("haproxy-tls", ["haproxy", "-db", "-f", cfg])
            proc.wait_listening(h, tcp=ports)
            return h
        if t == "apisix-stream":
            a = ApisixStream(self.ctx.procs, self.ctx.work, self.ctx.binary, self.p)
            ssl = {"ssl_protocols": f'"TLSv{version}"'}
            if not tickets:
                ssl["ssl_session_tickets"] = "false"
            p = a.start(tls=ports, ssl=ssl)
            for i, kind in enumerate(self.keys, 1):
                crt, key, _, name = self.certs[kind]
                # wrk (T4) sends the URL's host name, localhost, as its SNI
                snis = [name, "localhost"] if i == 1 else [name]
                a.put(f"ssls/{i}", {"cert": open(crt).read(), "key": open(key).read(),
                                    "snis": snis})
            for i, (f, b, *_) in enumerate(self.fronts(), 1):
                a.route(i, f, b)
            proc.wait_listening(p, tcp=ports)
            self.apisix = a
            return p
        raise Failed(f"{t} is not a target of the tls suite")

    # -------------------------------------------------------------- run
    def client(self, name, args, seconds):
        env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
        try:
            r = subprocess.run([sys.executable, "-m", "bench.tlsclient", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=seconds + 30, env=env, check=False)
        except subprocess.TimeoutExpired as e:
            raise Failed(f"{name}: the TLS clients did not finish") from e
        text = r.stdout.decode(errors="replace")
        with open(os.path.join(self.ctx.raw, f"{name}.txt"), "w") as f:
            f.write(text)
        try:
            out = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError) as e:
            raise Failed(f"{name}: no result from the TLS clients") from e
        if "error" in out:
            raise Failed(f"{name}: {out['error']}")
        return out

    def check(self, t, version):
        """One handshake and reply through the first key's listener, at `version`."""
        end = time.monotonic() + 10
        last = ""
        k = self.keys[0]
        while time.monotonic() < end:
            try:
                out = self.client(f"check-{t}", ["check", "--port", str(self.hs_port(k)),
                                                 "--sni", self.certs[k][3], "--tls", version], 5)
                if out.get("ok"):
                    if out["version"] != f"TLSv{version}":
                        raise Failed(f"negotiated {out['version']}, not TLSv{version}")
                    self.negotiated[version] = out["cipher"]
                    return
            except Failed as e:
                last = str(e)
                if last.startswith("negotiated"):
                    break
            time.sleep(0.25)
        raise Failed(f"TLS {version} through it fails ({last})")

    def run(self):
        self.make_certs()
        self.start_backends()
        backends = list(self.ctx.procs.running)
        failed = run_rounds(self.ctx, self.suite, self.progress, self.steps,
                            lambda rnd, t: self.target(rnd, t, backends), backends)
        ciphers = ", ".join(f"TLS {v}: {c}" for v, c in sorted(self.negotiated.items()))
        self.suite.notes.append(f"every proxy pinned to one TLS version at a time; "
                                f"negotiated: {ciphers or '?'}")
        self.suite.notes.append("T4: wrk -t 2, `Connection: close`, every request a new TLS "
                                "connection offering the previous session; nginx with "
                                "ssl_session_cache shared:SSL:10m and tickets, HAProxy with "
                                "tickets, apisix-stream with its defaults (tickets); "
                                "resumed (client's count): a 1 s python3 ssl check of the same "
                                "listener; (apisix-stream's stats): during the wrk run")
        return failed

    def target(self, rnd, t, backends):
        """Every version and workload through target `t`; returns the other load seen."""
        self.progress.begin(rnd, t, f"start and check TLS {self.versions[0]}")
        self.suite.record(rnd, t, "background_busy_pct", proc.busy_now(0.5))
        meter = proc.LoadMeter()
        errors = 0
        for i, version in enumerate(self.versions):
            if i:
                self.ctx.procs.stop_all_but(backends)
                self.progress.begin(rnd, t, f"start and check TLS {version}")
            # No listener of T1, T2, T3 and T5 issues session tickets, on any
            # target; apisix-stream gets a second process with them for T4.
            restart = t == "apisix-stream" and not self.only_t4
            proxy = self.start_proxy(t, version, tickets=not restart)
            self.check(t, version)
            if i == 0 and not self.only_t4:
                errors += self.memory(rnd, t, proxy, version)
            for kind in [] if self.only_t4 else self.keys:
                errors += self.full(rnd, t, proxy, version, kind)
            if i == 0 and not self.only_t4:
                for direction in ("up", "down"):
                    errors += self.bulk(rnd, t, proxy, version, direction)
            if restart:
                if proxy.poll() is not None:
                    raise Failed(f"exited with status {proxy.returncode} during the run")
                self.ctx.procs.stop_all_but(backends)
                proxy = self.start_proxy(t, version, tickets=True)
                self.check(t, version)
            errors += self.resumed(rnd, t, proxy, version)
            if proxy.poll() is not None:
                raise Failed(f"exited with status {proxy.returncode} during the run")
        self.suite.record(rnd, t, "errors", errors)
        others, steal = meter.read()
        self.suite.record(rnd, t, "others_cpu_pct", others)
        self.suite.record(rnd, t, "steal_pct", steal)
        return others, steal

    # -------------------------------------------------------------- workloads
    def full(self, rnd, t, proxy, version, kind):
        """T1: full handshakes with one key type; returns the errors."""
        self.progress.begin(rnd, t, f"T1 full handshakes, {KEYS[kind]}, TLS {version}")
        cpu0 = proc.cpu_seconds(proxy.pid)
        try:
            out = self.client(f"r{rnd}-{t}-t1-{kind}-{vkey(version)}", [
                "hs", "--port", str(self.hs_port(kind)), "--sni", self.certs[kind][3],
                "--clients", str(self.ctx.tls_clients), "--seconds", str(self.d),
                "--tls", version], self.d)
        except Failed as e:
            self.progress.say(f"  {e}")
            return 1
        if out["handshakes"]:
            base = f"t1_{kind}_{vkey(version)}"
            self.suite.record(rnd, t, f"{base}_handshakes_per_s", out["rate"])
            self.suite.record(rnd, t, f"{base}_cpu_us_per_handshake", round(
                1e6 * (proc.cpu_seconds(proxy.pid) - cpu0) / out["handshakes"], 1))
        return out["errors"]

    def server_counts(self, t):
        """apisix-stream's (full, resumed) handshakes so far; None elsewhere."""
        if t != "apisix-stream":
            return None
        h = self.apisix.stats().get("tls_handshakes", {})
        return h.get("full", 0), h.get("resumed", 0)

    def resumed(self, rnd, t, proxy, version):
        """T4: new connections resuming the previous one's session: checked
        with python3's ssl client, then measured with wrk."""
        self.progress.begin(rnd, t, f"T4 resumed handshakes, TLS {version}")
        rec = lambda k, v: self.suite.record(rnd, t, f"t4_{vkey(version)}_{k}", v)  # noqa: E731
        name = f"r{rnd}-{t}-t4-{vkey(version)}"
        try:
            out = self.client(f"{name}-check", [
                "resume", "--port", str(self.p.f_resume), "--sni", self.certs[self.keys[0]][3],
                "--clients", "1", "--seconds", "1", "--tls", version], 1)
        except Failed as e:
            self.progress.say(f"  {e}")
            return 1
        if out["handshakes"]:
            rec("resumed_pct", out["resumed_pct"])
        if out["resumed_pct"] < 90:
            note = (f"round {rnd}, {t}, T4 TLS {version}: only {out['resumed_pct']}% of "
                    f"{out['handshakes']} handshakes of the python3 client resumed")
            self.progress.say(f"  {note}")
            self.suite.notes.append(note)
        server0 = self.server_counts(t)
        cpu0 = proc.cpu_seconds(proxy.pid)
        text = proc.run(["wrk", "-t", "2", "-c", str(self.ctx.tls_clients), "-d", f"{self.d}s",
                         "-H", "Connection: close", "-s", WRK_SCRIPT,
                         f"https://localhost:{self.p.f_resume}/ok"], self.d + 20,
                        os.path.join(self.ctx.raw, f"{name}-wrk.txt"))
        cpu = proc.cpu_seconds(proxy.pid) - cpu0
        r = next((json.loads(ln) for ln in text.splitlines() if ln.startswith('{"wrk"')), None)
        if not r or not r["requests"]:
            raise Failed(f"T4: wrk reported nothing (see raw/{name}-wrk.txt)")
        rec("resumed_per_s", round(r["requests"] / (r["duration_us"] / 1e6), 1))
        rec("cpu_us_per_handshake", round(1e6 * cpu / r["requests"], 1))
        if server0 is not None:
            full, res = (b - a for a, b in zip(server0, self.server_counts(t)))
            if full + res:
                rec("server_resumed_pct", round(100 * res / (full + res), 2))
        return out["errors"] + r["errors"]

    def memory(self, rnd, t, proxy, version):
        """T5: RSS growth over N TLS connections held after one small reply."""
        n = self.ctx.tls_idle_conns
        self.progress.begin(rnd, t, f"T5 memory per idle TLS connection ({n}, TLS {version})")
        k0 = self.keys[0]
        b_keep = self.p.b_keep
        before_up = proc.established_to(b_keep)
        base = proc.rss_kib(proxy.pid)
        deadline = time.monotonic() + 30 + n / 50
        held = tlsclient.hold(self.p.f_hold, self.certs[k0][3], version, n, HOLD_REQUEST,
                              deadline)
        try:
            while time.monotonic() < deadline:
                if proc.established_to(b_keep) - before_up >= len(held):
                    break
                time.sleep(0.1)
            time.sleep(1.0)
            rss = proc.rss_kib(proxy.pid)
        finally:
            for s in held:
                s.close()
        if len(held) < n:
            note = f"round {rnd}, {t}, T5: only {len(held)} of {n} TLS connections held"
            self.progress.say(f"  {note}")
            self.suite.notes.append(note)
            return 1
        self.suite.record(rnd, t, "t5_idle_kib_per_conn", round((rss - base) / n, 2))
        self.suite.record(rnd, t, "t5_idle_base_mib", round(base / 1024, 1))
        time.sleep(1)  # let the closes drain
        return 0

    def bulk(self, rnd, t, proxy, version, direction):
        """T2 (up) or T3 (down): bytes through --tls-streams connections."""
        key = "t2" if direction == "up" else "t3"
        port = self.p.f_up if direction == "up" else self.p.f_down
        label = "T2 bulk TLS upload" if key == "t2" else "T3 bulk TLS download"
        self.progress.begin(rnd, t, f"{label}, TLS {version}")
        cpu0 = proc.cpu_seconds(proxy.pid)
        try:
            out = self.client(f"r{rnd}-{t}-{key}", [
                "bulk", direction, "--port", str(port), "--sni", self.certs[self.bulk_key][3],
                "--streams", str(self.ctx.tls_streams), "--seconds", str(self.d),
                "--tls", version], self.d)
        except Failed as e:
            self.progress.say(f"  {e}")
            return 1
        if out["bytes"] and not out["errors"]:
            self.suite.record(rnd, t, f"{key}_{direction}load_mbps", out["mbps"])
            self.suite.record(rnd, t, f"{key}_cpu_ms_per_gb", round(
                1e12 * (proc.cpu_seconds(proxy.pid) - cpu0) / out["bytes"], 1))
        time.sleep(0.3)
        return out["errors"]
