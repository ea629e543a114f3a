"""The plain TCP/UDP suite: bulk TCP, new connections, keep-alive
request/response, 1 MiB downloads, UDP DNS, memory per connection, and the
proxy's CPU per unit of work, for every target in turn, round after round."""

import json
import os
import time

from . import loadgen, proc
from .proc import Failed
from .results import Metric
from .rounds import LOAD_METRICS, run_rounds
from .targets import L4

HERE = os.path.dirname(os.path.abspath(__file__))
WRK_SCRIPT = os.path.join(HERE, "wrk-summary.lua")

METRICS = [
    Metric("w1_bulk_1stream_gbps", "W1 bulk TCP, 1 stream", "Gbit/s", "higher"),
    Metric("w1_bulk_4streams_gbps", "W1 bulk TCP, 4 streams", "Gbit/s", "higher"),
    Metric("w1_cpu_ms_per_gb", "W1 proxy CPU per GB", "ms", "lower", True),
    Metric("w2_new_conn_rps", "W2 new connections (Connection: close)", "req/s", "higher"),
    Metric("w2_cpu_us_per_conn", "W2 proxy CPU per connection", "us", "lower", True),
    Metric("w3_keepalive_rps", "W3 keep-alive, 50 connections", "req/s", "higher"),
    Metric("w3_keepalive_p50_ms", "W3 keep-alive p50 latency", "ms", "lower"),
    Metric("w3_keepalive_p99_ms", "W3 keep-alive p99 latency", "ms", "lower"),
    Metric("w3_cpu_us_per_req", "W3 proxy CPU per request", "us", "lower", True),
    Metric("w4_udp_qps", "W4 UDP DNS", "queries/s", "higher"),
    Metric("w4_udp_lost_pct", "W4 UDP lost queries", "% sent", "lower"),
    Metric("w4_cpu_us_per_query", "W4 proxy CPU per query", "us", "lower", True),
    Metric("w5_idle_kib_per_conn", "W5 memory per idle connection", "KiB", "lower", True),
    Metric("w5_idle_base_mib", "W5 RSS before the connections", "MiB", "lower", True),
    Metric("w7_used_kib_per_conn", "W7 memory per connection after a 64 KiB reply",
           "KiB", "lower", True),
    Metric("w6_1mib_download_mbps", "W6 1 MiB downloads", "MB/s", "higher"),
    Metric("w6_cpu_ms_per_gb", "W6 proxy CPU per GB", "ms", "lower", True),
    Metric("errors", "socket errors / non-2xx (W2, W3, W6)", "count", "lower"),
] + LOAD_METRICS
CURVES = ["w5_idle_kib_per_conn", "w7_used_kib_per_conn"]


def memory_steps(top):
    """Connection counts at which memory is read, up to `top`."""
    steps = sorted({s for s in (top // 10, top // 4, top // 2, top) if s >= 10})
    return steps or [top]


class Run:
    """One run of the suite: its set-up, the figures, the progress line."""

    def __init__(self, ctx, suite, progress):
        self.ctx, self.suite, self.progress = ctx, suite, progress
        self.setup = L4(ctx.procs, ctx.work, ctx.ports, ctx.binary, ctx.cpus)
        self.d = ctx.duration

    # -------------------------------------------------------------- plan
    def steps(self, t):
        """Estimated seconds of each step through target `t`."""
        mem = 4 + self.ctx.idle_conns / 1500
        out = [2.5]
        if t == "dnsdist":
            return out + [self.d + 1.5]
        if t != "direct":
            out += [mem, mem * 1.5]
        out += [2 * self.d + 3] + [self.d + 1.5] * 3
        if t != "haproxy":
            out.append(self.d + 1.5)
        return out

    def plan(self):
        for _ in range(self.ctx.rounds):
            for t in self.suite.targets:
                for s in self.steps(t):
                    self.progress.add(s)

    # -------------------------------------------------------------- run
    def run(self):
        """Every round; returns the targets that failed somewhere."""
        self.setup.start_backends()
        self.backends = list(self.ctx.procs.running)
        if not loadgen.dns_answers(self.ctx.ports.b_dns):
            raise Failed("the dnsmasq backend does not answer bench.test")
        return run_rounds(self.ctx, self.suite, self.progress, self.steps, self.target,
                          self.backends)

    def target(self, rnd, t):
        """Every workload through target `t`; returns the other load seen."""
        rec = lambda k, v: self.suite.record(rnd, t, k, v)  # noqa: E731
        self.progress.begin(rnd, t, "start and check")
        rec("background_busy_pct", proc.busy_now(0.5))
        proxy = self.setup.start(t)
        self.proxy = proxy
        iperf, http, dns = self.setup.front(t)
        self.check(t, http, dns)
        meter = proc.LoadMeter()
        errors = 0
        work = []
        if t != "dnsdist":
            if proxy:
                work.append((None, lambda: self.memory(rnd, t, proxy, http)))
            work.append(("W1 bulk TCP (iperf3, 1 and 4 streams)",
                         lambda: self.bulk(rnd, t, iperf)))
            work.append(("W2 new connections (wrk)", lambda: self.new_conns(rnd, t, http)))
            work.append(("W3 keep-alive request/response (wrk)",
                         lambda: self.keepalive(rnd, t, http)))
            work.append(("W6 1 MiB downloads (wrk)", lambda: self.downloads(rnd, t, http)))
        if t != "haproxy":  # haproxy has no UDP proxy
            work.append(("W4 UDP DNS (dnsperf)", lambda: self.udp(rnd, t, dns)))
        for what, fn in work:
            if what:
                self.progress.begin(rnd, t, what)
            try:
                errors += fn() or 0
            except Failed as e:
                self.progress.say(f"  {what or 'memory'}: {e}")
                self.suite.notes.append(f"round {rnd}, {t}, {what or 'memory'}: {e}")
                errors += 1
            if proxy and proxy.poll() is not None:
                raise Failed(f"exited with status {proxy.returncode} during the run")
            time.sleep(0.3)
        rec("errors", errors)
        others, steal = meter.read()
        rec("others_cpu_pct", others)
        rec("steal_pct", steal)
        return others, steal

    def check(self, t, http, dns):
        """The target must pass one HTTP request and one DNS query first."""
        end = time.monotonic() + 10
        ok_http = t == "dnsdist"
        ok_dns = t == "haproxy"
        while time.monotonic() < end and not (ok_http and ok_dns):
            ok_http = ok_http or loadgen.http_get_ok(http)
            ok_dns = ok_dns or loadgen.dns_answers(dns)
            if not (ok_http and ok_dns):
                time.sleep(0.2)
        if not ok_http:
            raise Failed("HTTP through it fails")
        if not ok_dns:
            raise Failed("DNS through it fails")

    def cpu(self):
        return proc.cpu_seconds(self.proxy.pid) if self.proxy else None

    def per_unit(self, rnd, t, key, cpu0, units, scale):
        if cpu0 is None or not units:
            return
        self.suite.record(rnd, t, key, round(scale * (self.cpu() - cpu0) / units, 3))

    def raw(self, rnd, t, name):
        return os.path.join(self.ctx.raw, f"r{rnd}-{t}-{name}")

    # -------------------------------------------------------------- workloads
    def memory(self, rnd, t, proxy, http):
        steps = memory_steps(self.ctx.idle_conns)
        b_http = self.ctx.ports.b_http
        self.progress.begin(rnd, t, f"W5 memory per idle connection (up to {steps[-1]})")
        base, rows, note = loadgen.memory_steps(proxy.pid, http, b_http, steps)
        self.suite.record_curve("w5_idle_kib_per_conn", rnd, t, rows)
        if rows and rows[-1][0] == steps[-1]:
            self.suite.record(rnd, t, "w5_idle_kib_per_conn", rows[-1][1])
            self.suite.record(rnd, t, "w5_idle_base_mib", round(base / 1024, 1))
        if note:
            self.progress.say(f"  W5: {note}")
        time.sleep(1)  # let the closes drain
        self.progress.begin(rnd, t, f"W7 memory per connection after a 64 KiB reply "
                                    f"(up to {steps[-1]})")
        _, rows, note = loadgen.memory_steps(proxy.pid, http, b_http, steps, get="/64k.bin")
        self.suite.record_curve("w7_used_kib_per_conn", rnd, t, rows)
        if rows and rows[-1][0] == steps[-1] and not note:
            self.suite.record(rnd, t, "w7_used_kib_per_conn", rows[-1][1])
        if note:
            self.progress.say(f"  W7: {note}")
        time.sleep(1)

    def bulk(self, rnd, t, port):
        cpu0, total = self.cpu(), 0
        for streams, key in ((1, "w1_bulk_1stream_gbps"), (4, "w1_bulk_4streams_gbps")):
            out = proc.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(self.d),
                            "-P", str(streams), "-J"], self.d + 20,
                           self.raw(rnd, t, f"iperf3-P{streams}.json"))
            try:
                end = json.loads(out)["end"]["sum_received"]
            except (ValueError, KeyError) as e:
                raise Failed(f"iperf3 -P {streams} gave no result ({e})") from e
            self.suite.record(rnd, t, key, round(end["bits_per_second"] / 1e9, 3))
            total += end["bytes"]
        self.per_unit(rnd, t, "w1_cpu_ms_per_gb", cpu0, total, 1e12)

    def wrk(self, rnd, t, name, port, conns, path, *extra):
        url = f"http://127.0.0.1:{port}{path}"
        out = proc.run(["wrk", "-t", "1", "-c", str(conns), "-d", f"{self.d}s", "--latency",
                        "-s", WRK_SCRIPT, *extra, url], self.d + 20,
                       self.raw(rnd, t, f"wrk-{name}.txt"))
        for line in out.splitlines():
            if line.startswith("{\"wrk\""):
                r = json.loads(line)
                if r["requests"] and r["duration_us"]:
                    return r
        raise Failed(f"wrk {name} reported nothing (see {self.raw(rnd, t, 'wrk-' + name)}.txt)")

    def new_conns(self, rnd, t, port):
        cpu0 = self.cpu()
        r = self.wrk(rnd, t, "close", port, 50, "/64b", "-H", "Connection: close")
        self.suite.record(rnd, t, "w2_new_conn_rps",
                          round(r["requests"] / (r["duration_us"] / 1e6), 1))
        self.per_unit(rnd, t, "w2_cpu_us_per_conn", cpu0, r["requests"], 1e6)
        return r["errors"]

    def keepalive(self, rnd, t, port):
        cpu0 = self.cpu()
        r = self.wrk(rnd, t, "keepalive", port, 50, "/64b")
        rec = lambda k, v: self.suite.record(rnd, t, k, v)  # noqa: E731
        rec("w3_keepalive_rps", round(r["requests"] / (r["duration_us"] / 1e6), 1))
        rec("w3_keepalive_p50_ms", r["p50_us"] / 1000)
        rec("w3_keepalive_p99_ms", r["p99_us"] / 1000)
        self.per_unit(rnd, t, "w3_cpu_us_per_req", cpu0, r["requests"], 1e6)
        return r["errors"]

    def downloads(self, rnd, t, port):
        cpu0 = self.cpu()
        r = self.wrk(rnd, t, "1m", port, 10, "/1m.bin")
        self.suite.record(rnd, t, "w6_1mib_download_mbps",
                          round(r["bytes"] / (r["duration_us"] / 1e6) / 1e6, 1))
        self.per_unit(rnd, t, "w6_cpu_ms_per_gb", cpu0, r["bytes"], 1e12)
        return r["errors"]

    def udp(self, rnd, t, port):
        queries = os.path.join(self.ctx.work, "queries.txt")
        with open(queries, "w") as f:
            f.write("bench.test A\n")
        cpu0 = self.cpu()
        out = proc.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries,
                        "-l", str(self.d), "-c", "4", "-q", "100", "-t", "1",
                        "-O", "suppress=timeout"], self.d + 20, self.raw(rnd, t, "dnsperf.txt"))
        found = {}
        for line in out.splitlines():
            words = line.split()
            for label, key in (("Queries sent:", "sent"), ("Queries lost:", "lost"),
                               ("Queries per second:", "qps")):
                if line.strip().startswith(label):
                    found[key] = float(words[len(label.split())])
        if not found.get("sent") or "qps" not in found:
            raise Failed("dnsperf reported nothing (see raw/dnsperf output)")
        self.suite.record(rnd, t, "w4_udp_qps", found["qps"])
        self.suite.record(rnd, t, "w4_udp_lost_pct",
                          round(100 * found.get("lost", 0) / found["sent"], 3))
        self.per_unit(rnd, t, "w4_cpu_us_per_query", cpu0, found["sent"], 1e6)
