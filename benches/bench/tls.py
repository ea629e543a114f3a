"""The TLS suite: full handshakes per second for an RSA-2048 and an ECDSA
P-256 certificate, and bulk TLS in both directions, with the proxy's CPU
per handshake and per GB. Every proxy terminates TLS on 127.0.0.1 with the
same self-signed certificates and relays plain bytes to loopback backends;
every handshake is a full one (no session cache, no tickets)."""

import json
import os
import subprocess
import sys
import time

from . import proc
from .proc import Failed
from .results import Metric
from .targets import ApisixStream, nginx_stream_module, start_nginx

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = {"rsa": "RSA-2048", "ecdsa": "ECDSA P-256"}

METRICS = [
    Metric("t1_rsa_handshakes_per_s", "T1 full handshakes, RSA-2048", "per s", "higher"),
    Metric("t1_rsa_cpu_us_per_handshake", "T1 proxy CPU per handshake, RSA-2048", "us",
           "lower", True),
    Metric("t1_ecdsa_handshakes_per_s", "T1 full handshakes, ECDSA P-256", "per s", "higher"),
    Metric("t1_ecdsa_cpu_us_per_handshake", "T1 proxy CPU per handshake, ECDSA P-256", "us",
           "lower", True),
    Metric("t2_upload_mbps", "T2 bulk TLS upload (client to backend)", "MB/s", "higher"),
    Metric("t2_cpu_ms_per_gb", "T2 proxy CPU per GB", "ms", "lower", True),
    Metric("t3_download_mbps", "T3 bulk TLS download (backend to client)", "MB/s", "higher"),
    Metric("t3_cpu_ms_per_gb", "T3 proxy CPU per GB", "ms", "lower", True),
    Metric("errors", "failed connections / handshakes", "count", "lower"),
    Metric("background_busy_pct", "CPU busy just before the target", "%", "info"),
    Metric("others_cpu_pct", "CPU used by other processes during the target", "%", "info"),
    Metric("steal_pct", "CPU stolen by the hypervisor during the target", "%", "info"),
]


class Run:
    """One run of the TLS suite."""

    def __init__(self, ctx, suite, progress):
        self.ctx, self.suite, self.progress = ctx, suite, progress
        self.d = ctx.tls_duration
        self.p = ctx.ports
        self.certs = {}
        self.negotiated = ""

    def steps(self, t):
        return [3.0] + [self.d + 2.5] * 4

    def plan(self):
        for _ in range(self.ctx.rounds):
            for t in self.suite.targets:
                for s in self.steps(t):
                    self.progress.add(s)

    # -------------------------------------------------------------- set-up
    def make_certs(self):
        d = os.path.join(self.ctx.work, "cert")
        os.makedirs(d, exist_ok=True)
        for kind in KEYS:
            key, crt = os.path.join(d, f"{kind}.key"), os.path.join(d, f"{kind}.crt")
            new = ["-newkey", "rsa:2048"] if kind == "rsa" else [
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
            name = f"{kind}.bench.test"
            proc.run(["openssl", "req", "-x509", *new, "-nodes", "-days", "2",
                      "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                      "-keyout", key, "-out", crt], 60)
            pem = os.path.join(d, f"{kind}.pem")  # haproxy wants both in one file
            with open(pem, "w") as f:
                f.write(open(crt).read() + open(key).read())
            self.certs[kind] = (crt, key, pem, name)

    def start_backends(self):
        modules = nginx_stream_module()
        start_nginx(self.ctx.procs, self.ctx.work, "backend-reply",
                    f'stream {{ server {{ listen 127.0.0.1:{self.p.b_reply} reuseport '
                    f'backlog=4096; return "ok\\n"; }} }}',
                    tcp=[self.p.b_reply], modules=modules)
        procs = self.ctx.procs
        s = procs.start("backend-sink", [
            "socat", "-u", "-b", "262144",
            f"TCP-LISTEN:{self.p.b_sink},bind=127.0.0.1,fork,reuseaddr,backlog=1024",
            "OPEN:/dev/null"])
        proc.wait_listening(s, tcp=[self.p.b_sink])
        s = procs.start("backend-source", [
            "socat", "-u", "-b", "262144", "OPEN:/dev/zero",
            f"TCP-LISTEN:{self.p.b_source},bind=127.0.0.1,fork,reuseaddr,backlog=1024"])
        proc.wait_listening(s, tcp=[self.p.b_source])

    def fronts(self):
        """(front port, backend port, key kind) of every TLS listener."""
        p = self.p
        return [(p.f_hs_rsa, p.b_reply, "rsa"), (p.f_hs_ecdsa, p.b_reply, "ecdsa"),
                (p.f_up, p.b_sink, "rsa"), (p.f_down, p.b_source, "rsa")]

    def start_proxy(self, t):
        ports = [f for f, _, _ in self.fronts()]
        if t == "nginx":
            servers = "\n".join(
                f"  server {{ listen 127.0.0.1:{f} ssl reuseport backlog=4096; "
                f"ssl_certificate {self.certs[k][0]}; ssl_certificate_key {self.certs[k][1]}; "
                f"proxy_pass 127.0.0.1:{b}; }}" for f, b, k in self.fronts())
            return start_nginx(self.ctx.procs, self.ctx.work, "nginx-tls", f"""stream {{
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache off;
  ssl_session_tickets off;
{servers}
}}""", tcp=ports, modules=nginx_stream_module())
        if t == "haproxy":
            cfg = os.path.join(self.ctx.work, "haproxy-tls.cfg")
            body = [f"global\n  nbthread {self.ctx.cpus}\n  tune.ssl.cachesize 0\n"
                    "  ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets\n"
                    "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
                    "  timeout server 60s"]
            for i, (f, b, k) in enumerate(self.fronts()):
                body.append(f"listen tls{i}\n  bind 127.0.0.1:{f} ssl crt {self.certs[k][2]}\n"
                            f"  server s1 127.0.0.1:{b}")
            with open(cfg, "w") as fh:
                fh.write("\n".join(body) + "\n")
            h = self.ctx.procs.start("haproxy-tls", ["haproxy", "-db", "-f", cfg])
            proc.wait_listening(h, tcp=ports)
            return h
        if t == "apisix-stream":
            a = ApisixStream(self.ctx.procs, self.ctx.work, self.ctx.binary, self.p)
            p = a.start(tls=ports)
            for i, kind in enumerate(KEYS, 1):
                crt, key, _, name = self.certs[kind]
                a.put(f"ssls/{i}", {"cert": open(crt).read(), "key": open(key).read(),
                                    "snis": [name]})
            for i, (f, b, _) in enumerate(self.fronts(), 1):
                a.route(i, f, b)
            proc.wait_listening(p, tcp=ports)
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

    def check(self, t):
        end = time.monotonic() + 10
        last = ""
        while time.monotonic() < end:
            try:
                out = self.client(f"check-{t}", ["check", "--port", str(self.p.f_hs_rsa),
                                                 "--sni", self.certs["rsa"][3],
                                                 "--tls", self.ctx.tls_max], 5)
                if out.get("ok"):
                    self.negotiated = f"{out['version']} {out['cipher']}"
                    return
            except Failed as e:
                last = str(e)
            time.sleep(0.25)
        raise Failed(f"TLS through it fails ({last})")

    def run(self):
        self.make_certs()
        self.start_backends()
        backends = list(self.ctx.procs.running)
        failed = []
        for rnd in range(1, self.ctx.rounds + 1):
            order = list(self.suite.targets)
            if rnd % 2 == 0:
                order.reverse()
            worst = (0.0, 0.0, "")
            for t in order:
                first = self.progress.step + 1
                try:
                    others, steal = self.target(rnd, t)
                    if others + steal > worst[0] + worst[1]:
                        worst = (others, steal, t)
                except Failed as e:
                    self.progress.say(f"  {t}: {e}; its cells in round {rnd} stay empty")
                    self.suite.notes.append(f"round {rnd}, {t}: {e}")
                    failed.append(t)
                finally:
                    self.ctx.procs.stop_all_but(backends)
                self.progress.skip_to(first + len(self.steps(t)))
            self.ctx.round_load(self.suite, rnd, worst)
        self.suite.notes.append(f"clients offer up to TLS {self.ctx.tls_max}; "
                                f"negotiated: {self.negotiated or '?'}")
        return failed

    def target(self, rnd, t):
        rec = lambda k, v: self.suite.record(rnd, t, k, v)  # noqa: E731
        self.progress.begin(rnd, t, "start and check TLS")
        rec("background_busy_pct", proc.busy_now(0.5))
        proxy = self.start_proxy(t)
        self.check(t)
        meter = proc.LoadMeter()
        errors = 0
        common = ["--seconds", str(self.d), "--tls", self.ctx.tls_max]
        for kind in KEYS:
            self.progress.begin(rnd, t, f"T1 full handshakes, {KEYS[kind]}")
            port = self.p.f_hs_rsa if kind == "rsa" else self.p.f_hs_ecdsa
            cpu0 = proc.cpu_seconds(proxy.pid)
            try:
                out = self.client(f"r{rnd}-{t}-t1-{kind}", [
                    "hs", "--port", str(port), "--sni", self.certs[kind][3],
                    "--clients", str(self.ctx.tls_clients), *common], self.d)
            except Failed as e:
                self.progress.say(f"  {e}")
                errors += 1
                continue
            errors += out["errors"]
            if out["handshakes"]:
                rec(f"t1_{kind}_handshakes_per_s", out["rate"])
                rec(f"t1_{kind}_cpu_us_per_handshake",
                    round(1e6 * (proc.cpu_seconds(proxy.pid) - cpu0) / out["handshakes"], 1))
        for direction, key, port in (("up", "t2", self.p.f_up), ("down", "t3", self.p.f_down)):
            label = "T2 bulk TLS upload" if key == "t2" else "T3 bulk TLS download"
            self.progress.begin(rnd, t, label)
            cpu0 = proc.cpu_seconds(proxy.pid)
            try:
                out = self.client(f"r{rnd}-{t}-{key}", [
                    "bulk", direction, "--port", str(port), "--sni", self.certs["rsa"][3],
                    "--streams", str(self.ctx.tls_streams), *common], self.d)
            except Failed as e:
                self.progress.say(f"  {e}")
                errors += 1
                continue
            errors += out["errors"]
            if out["bytes"] and not out["errors"]:
                rec(f"{key}_{direction}load_mbps", out["mbps"])
                rec(f"{key}_cpu_ms_per_gb",
                    round(1e12 * (proc.cpu_seconds(proxy.pid) - cpu0) / out["bytes"], 1))
            time.sleep(0.3)
        rec("errors", errors)
        if proxy.poll() is not None:
            raise Failed(f"exited with status {proxy.returncode} during the run")
        others, steal = meter.read()
        rec("others_cpu_pct", others)
        rec("steal_pct", steal)
        return others, steal
