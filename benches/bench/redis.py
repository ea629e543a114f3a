"""The redis suite: `redis-benchmark -t get,set` with 16 requests pipelined
(`-P 16`) and with none (`-P 1`) against a redis-server directly, through
nginx `stream` and HAProxy `mode tcp`, through an apisix-stream route of
plain TCP (target `apisix-stream`) and through an apisix-stream route with
`protocol: {name: redis}` (target `redis-route`: the proxy decodes every
command). The cost of decoding is the redis-route / apisix-stream ratio of
the same round.

Whether the redis route really decodes is checked, not assumed: a refused
route leaves its cells empty with the Admin API's answer in the notes, and a
route that is accepted but relayed as plain TCP (no
`apisix_redis_commands_total` in the metrics, no request counter in
`/v1/stream/stats`) is reported as such."""

import os
import socket
import time

from . import proc
from .proc import Failed
from .results import Metric
from .rounds import LOAD_METRICS, run_rounds
from .targets import ApisixStream, nginx_stream_module, start_nginx

SUBJECT_ROUTE = "redis-route"
PIPELINES = [16, 1]
XRPC = "xrpc:\n  protocols:\n    - name: redis\n"

METRICS = [
    Metric("p16_get_rps", "Redis GET, 16 pipelined (redis-benchmark -P 16)", "req/s", "higher"),
    Metric("p16_set_rps", "Redis SET, 16 pipelined", "req/s", "higher"),
    Metric("p16_cpu_us_per_req", "Redis proxy CPU per request, -P 16", "us", "lower", True),
    Metric("p1_get_rps", "Redis GET, not pipelined (-P 1)", "req/s", "higher"),
    Metric("p1_set_rps", "Redis SET, not pipelined", "req/s", "higher"),
    Metric("p1_get_p50_ms", "Redis GET p50 latency, -P 1", "ms", "lower"),
    Metric("p1_get_p99_ms", "Redis GET p99 latency, -P 1", "ms", "lower"),
    Metric("p1_cpu_us_per_req", "Redis proxy CPU per request, -P 1", "us", "lower", True),
] + LOAD_METRICS
PAIRS = [(SUBJECT_ROUTE, "apisix-stream")]
# what `run.sh --smoke` must have written
SMOKE_ROWS = [("redis", k, t) for t in ("direct", "apisix-stream")
              for k in ("p16_get_rps", "p16_set_rps", "p1_get_rps", "p1_set_rps")]


def targets_of(targets):
    """The suite's targets from the run's: plain TCP ones, and the redis
    route next to apisix-stream."""
    out = [t for t in targets if t in ("direct", "nginx", "haproxy", "apisix-stream")]
    if "apisix-stream" in out:
        out.append(SUBJECT_ROUTE)
    return out


def ping(port, timeout=2.0):
    """True when a RESP PING through 127.0.0.1:`port` answers +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def parse_csv(text):
    """redis-benchmark --csv: {test: [rps, p50 ms, p99 ms]} (latencies None
    on versions that print only the rate)."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip('"') for c in line.strip().split('","')]
        if len(cells) < 2 or cells[0] == "test":
            continue
        try:
            rps = float(cells[1])
        except ValueError:
            continue
        p50 = float(cells[4]) if len(cells) >= 7 else None
        p99 = float(cells[6]) if len(cells) >= 7 else None
        out[cells[0].upper()] = (rps, p50, p99)
    return out


class Run:
    """One run of the redis suite."""

    def __init__(self, ctx, suite, progress):
        self.ctx, self.suite, self.progress = ctx, suite, progress
        self.p = ctx.ports
        self.requests = ctx.redis_requests
        self.route_state = "not measured"

    def steps(self, t):
        # -P 16 at a few 100k requests/s, -P 1 at a few 10k
        return [2.5] + [2 * (self.requests / 300_000 + 1), 2 * (self.requests / 10 / 40_000 + 1)]

    def plan(self):
        for _ in range(self.ctx.rounds):
            for t in self.suite.targets:
                for s in self.steps(t):
                    self.progress.add(s)

    # -------------------------------------------------------------- set-up
    def start_backend(self):
        d = os.path.join(self.ctx.work, "redis")
        os.makedirs(d, exist_ok=True)
        r = self.ctx.procs.start("backend-redis", [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.p.b_redis),
            "--save", "", "--appendonly", "no", "--dir", d, "--protected-mode", "no",
            "--maxclients", "4096"])
        proc.wait_listening(r, tcp=[self.p.b_redis])
        if not ping(self.p.b_redis):
            raise Failed("redis-server does not answer PING")

    def start(self, t):
        """Start `t` in front of redis-server; (process or None, port)."""
        p = self.p
        if t == "direct":
            return None, p.b_redis
        if t == "nginx":
            return start_nginx(self.ctx.procs, self.ctx.work, "nginx-redis", f"""stream {{
  server {{
    listen 127.0.0.1:{p.f_redis} reuseport backlog=4096;
    proxy_pass 127.0.0.1:{p.b_redis};
  }}
}}""", tcp=[p.f_redis], modules=nginx_stream_module()), p.f_redis
        if t == "haproxy":
            cfg = os.path.join(self.ctx.work, "haproxy-redis.cfg")
            with open(cfg, "w") as f:
                f.write(f"global\n  nbthread {self.ctx.cpus}\ndefaults\n  mode tcp\n"
                        "  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n"
                        f"listen redis\n  bind 127.0.0.1:{p.f_redis}\n"
                        f"  server s1 127.0.0.1:{p.b_redis}\n")
            h = self.ctx.procs.start("haproxy-redis", ["haproxy", "-db", "-f", cfg])
            proc.wait_listening(h, tcp=[p.f_redis])
            return h, p.f_redis
        if t in ("apisix-stream", SUBJECT_ROUTE):
            a = ApisixStream(self.ctx.procs, self.ctx.work, self.ctx.binary, p)
            self.apisix = a
            proxy = a.start(tcp=[p.f_redis], extra=XRPC)
            protocol = {"name": "redis"} if t == SUBJECT_ROUTE else None
            try:
                a.route(1, p.f_redis, p.b_redis, protocol=protocol)
            except Failed as e:
                if protocol:
                    raise Refused(str(e)) from e
                raise
            proc.wait_listening(proxy, tcp=[p.f_redis])
            return proxy, p.f_redis
        raise Failed(f"{t} is not a target of the redis suite")

    # -------------------------------------------------------------- run
    def run(self):
        self.start_backend()
        backends = list(self.ctx.procs.running)
        failed = run_rounds(self.ctx, self.suite, self.progress, self.steps,
                            self.checked_target, backends)
        if SUBJECT_ROUTE in self.suite.targets:
            self.suite.notes.append(f"{SUBJECT_ROUTE}: apisix-stream through a route with "
                                    f"protocol redis; {self.route_state}")
        self.suite.notes.append(f"redis-benchmark -t get,set -c 50: -P 16 with "
                                f"{self.requests:,} requests per command, -P 1 with "
                                f"{self.requests // 10:,}")
        return failed

    def checked_target(self, rnd, t):
        """`target`, where a refused protocol route is noted, not a failure."""
        try:
            return self.target(rnd, t)
        except Refused as e:
            self.route_state = f"protocol route refused: {e}"
            self.progress.say(f"  {t}: {self.route_state}")
            return 0.0, 0.0

    def target(self, rnd, t):
        self.progress.begin(rnd, t, "start and check (PING)")
        self.suite.record(rnd, t, "background_busy_pct", proc.busy_now(0.5))
        proxy, port = self.start(t)
        end = time.monotonic() + 10
        while not ping(port):
            if time.monotonic() > end:
                raise Failed("PING through it gets no PONG")
            time.sleep(0.2)
        meter = proc.LoadMeter()
        for pipeline in PIPELINES:
            self.progress.begin(rnd, t, f"redis-benchmark -t get,set -P {pipeline}")
            self.bench(rnd, t, proxy, port, pipeline)
            if proxy and proxy.poll() is not None:
                raise Failed(f"exited with status {proxy.returncode} during the run")
        if t == SUBJECT_ROUTE:
            self.route_state = self.decoded()
            if not self.route_state.startswith("decoded"):
                self.progress.say(f"  {t}: {self.route_state}")
        others, steal = meter.read()
        self.suite.record(rnd, t, "others_cpu_pct", others)
        self.suite.record(rnd, t, "steal_pct", steal)
        return others, steal

    def bench(self, rnd, t, proxy, port, pipeline):
        n = self.requests if pipeline > 1 else max(1000, self.requests // 10)
        cpu0 = proc.cpu_seconds(proxy.pid) if proxy else None
        raw = os.path.join(self.ctx.raw, f"redis-r{rnd}-{t}-P{pipeline}.csv")
        # redis-benchmark waits forever on a refused connection: the timeout ends it
        out = parse_csv(proc.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
                                  "-t", "get,set", "-P", str(pipeline), "-n", str(n),
                                  "-c", "50", "--csv"], 30 + n / 5000, raw))
        if "GET" not in out or "SET" not in out:
            raise Failed(f"redis-benchmark -P {pipeline} reported no GET/SET rate (see {raw})")
        rec = lambda k, v: self.suite.record(rnd, t, f"p{pipeline}_{k}", v)  # noqa: E731
        rec("get_rps", out["GET"][0])
        rec("set_rps", out["SET"][0])
        if pipeline == 1:
            rec("get_p50_ms", out["GET"][1])
            rec("get_p99_ms", out["GET"][2])
        if proxy:
            rec("cpu_us_per_req", round(1e6 * (proc.cpu_seconds(proxy.pid) - cpu0) / (2 * n), 3))

    def decoded(self):
        """Whether apisix-stream decoded the commands of the redis route."""
        try:
            text = self.apisix.get(self.p.metrics, "/apisix/prometheus/metrics")
        except Failed:
            text = ""
        counted = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                      if ln.startswith("apisix_redis_commands_total") and " " in ln)
        if counted:
            return f"decoded (apisix_redis_commands_total: {counted:,.0f})"
        try:
            routes = self.apisix.stats().get("routes", [])
        except Failed:
            routes = []
        requests = sum(v for r in routes for k, v in r.items()
                       if "request" in k and isinstance(v, (int, float)))
        if requests:
            return f"decoded (requests counted in /v1/stream/stats: {requests:,.0f})"
        return ("protocol route accepted but not decoded: no apisix_redis_commands_total "
                "and no request counter, so its figures are plain TCP")

    def summary(self):
        out = self.suite.summary()
        out["redis_route"] = self.route_state
        return out


class Refused(Failed):
    """apisix-stream refused the route with the redis protocol."""
