"""benches/run.sh: apisix-stream side by side with `direct`, nginx `stream`,
HAProxy `mode tcp` and dnsdist on this machine's loopback, round after
round; a table on screen, a report folder with summary.md, results.json and
SVG charts."""

import argparse
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import external, l4, proc, redis, report, tls
from .proc import Failed
from .results import BUSY_WARN, Progress, Suite, clock
from .targets import ALL_TARGETS, Ports

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITES = ["l4", "tls", "redis", "routes", "held"]
SMOKE_SUITES = ["l4", "tls", "redis"]
TOOLS = {
    "l4": ["nginx", "iperf3", "wrk", "dnsperf", "dnsmasq", "curl"],
    "tls": ["nginx", "openssl", "socat", "wrk"],
    "redis": ["redis-server", "redis-benchmark"],
    "routes": [],
    "held": [],
}


def parse(argv):
    ap = argparse.ArgumentParser(
        prog="benches/run.sh", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Suites: l4 (default: bulk TCP, new connections, keep-alive, 1 MiB downloads, "
               "UDP DNS, memory per connection, proxy CPU), tls (full and resumed handshakes "
               "per key type and TLS version, memory per idle TLS connection, bulk TLS), "
               "redis (redis-benchmark through plain TCP and a redis protocol route), "
               "routes (Admin API writes against route count, benches/routes.py), "
               "held (held connections, benches/held.sh), all. Install the tools once with "
               "benches/install.sh.")
    ap.add_argument("--suite",
                    help="comma-separated suites, or all (default: l4; with --smoke: l4, "
                         "and tls and redis when their tools are installed)")
    ap.add_argument("--rounds", "--repeat", type=int, default=3,
                    help="rounds; every target runs once per round, the order alternating "
                         "(default 3)")
    ap.add_argument("--duration", type=int, default=2,
                    help="seconds per workload in the l4 suite (default 2)")
    ap.add_argument("--tls-duration", type=int, default=5,
                    help="seconds per workload in the tls suite (default 5)")
    ap.add_argument("--idle-conns", type=int, default=5000,
                    help="connections held for the memory rows; also read at 1/10, 1/4 "
                         "and 1/2 of it for the chart (default 5000)")
    ap.add_argument("--targets", help="comma-separated subset of "
                    + ",".join(ALL_TARGETS) + " (default: every one installed)")
    ap.add_argument("--tls-clients", type=int, default=8, help="handshake clients (default 8)")
    ap.add_argument("--tls-streams", type=int, default=4,
                    help="bulk TLS connections (default 4)")
    ap.add_argument("--key", "--keys", dest="keys",
                    help="comma-separated certificate key types of the tls suite: "
                         + ", ".join(f"{k} ({v})" for k, v in tls.KEYS.items())
                         + " (default: all)")
    ap.add_argument("--tls-versions",
                    help="comma-separated TLS versions, each proxy pinned to one at a time; "
                         "memory and bulk rows use the first (default 1.3,1.2)")
    ap.add_argument("--tls-idle-conns", type=int, default=2000,
                    help="TLS connections held for the T5 memory row (default 2000)")
    ap.add_argument("--redis-requests", type=int, default=2_000_000,
                    help="requests per command of redis-benchmark -P 16; -P 1 makes a "
                         "tenth (default 2000000)")
    ap.add_argument("--route-counts", default="1000,10000,100000",
                    help="route counts of the routes suite (default 1000,10000,100000)")
    ap.add_argument("--held-conns", type=int,
                    help="connections of the held suite (default: held.sh's own)")
    ap.add_argument("--bin", help="apisix-stream binary (default: build target/release)")
    ap.add_argument("--debug", action="store_true",
                    help="build and measure target/debug/apisix-stream (for checking the "
                         "harness, not for figures)")
    ap.add_argument("--no-build", action="store_true", help="never run cargo")
    ap.add_argument("--out", help="report folder (default target/bench/report-DATE)")
    ap.add_argument("--json", help="also write results.json here")
    ap.add_argument("--port-base", type=int, default=18500,
                    help="first loopback port used (default 18500; uses P..P+200)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder (configs and logs of every program)")
    ap.add_argument("--smoke", action="store_true",
                    help="one round, 1 s per workload, direct and apisix-stream, 200 "
                         "connections, debug binary, only T4 (ECDSA, TLS 1.3) of the tls "
                         "suite and 50,000 redis requests; checks the report has every key")
    a = ap.parse_args(argv)
    if a.smoke:
        a.rounds, a.duration, a.tls_duration, a.idle_conns = 1, 1, 1, 200
        a.tls_idle_conns, a.redis_requests = 50, 50_000
        a.targets = a.targets or "direct,apisix-stream"
        a.debug = a.debug or not a.bin
        a.keys = a.keys or "ecdsa"
        a.tls_versions = a.tls_versions or "1.3"
        if not a.suite:
            a.suite = ",".join(s for s in SMOKE_SUITES if all(have(t) for t in TOOLS[s]))
    a.suite = a.suite or "l4"
    a.keys = a.keys or ",".join(tls.KEYS)
    a.tls_versions = a.tls_versions or ",".join(tls.VERSIONS)
    held_here = os.access(os.path.join(external.BENCHES, "held.sh"), os.X_OK)
    if a.suite == "all":
        suites = [s for s in SUITES if s != "held" or held_here]
    else:
        suites = a.suite.split(",")
    if "held" in suites and not held_here:
        ap.error("held suite: benches/held.sh is not in this checkout")
    for s in suites:
        if s not in SUITES:
            ap.error(f"unknown suite {s!r}; suites: {', '.join(SUITES)}, all")
    a.suites = suites
    a.keys = a.keys.split(",")
    a.tls_versions = a.tls_versions.split(",")
    for k in a.keys:
        if k not in tls.KEYS:
            ap.error(f"unknown key type {k!r}; key types: {', '.join(tls.KEYS)}")
    for v in a.tls_versions:
        if v not in tls.VERSIONS:
            ap.error(f"unknown TLS version {v!r}; versions: {', '.join(tls.VERSIONS)}")
    if len(set(a.keys)) < len(a.keys) or len(set(a.tls_versions)) < len(a.tls_versions):
        ap.error("--key and --tls-versions take each value once")
    for name in ("rounds", "duration", "tls_duration", "idle_conns", "tls_clients",
                 "tls_streams", "tls_idle_conns", "redis_requests"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 1024 <= a.port_base <= 65000:
        ap.error("--port-base must be between 1024 and 65000")
    try:
        a.route_counts = [int(x) for x in a.route_counts.split(",")]
    except ValueError:
        ap.error("--route-counts takes whole numbers separated by commas")
    return a


def have(tool):
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(tool, path=path) is not None


def pick_targets(a):
    if a.targets:
        ts = a.targets.split(",")
        for t in ts:
            if t not in ALL_TARGETS:
                raise Failed(f"unknown target {t}; targets: {', '.join(ALL_TARGETS)}")
            if t in ("nginx", "haproxy", "dnsdist") and not have(t):
                raise Failed(f"{t} is not installed; run benches/install.sh")
        return ts
    return [t for t in ALL_TARGETS if t in ("direct", "apisix-stream") or have(t)]


def binary(a):
    """The apisix-stream binary to measure, built when needed."""
    if a.bin:
        path = os.path.abspath(a.bin)
    else:
        profile = "debug" if a.debug else "release"
        target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
        path = os.path.join(os.path.abspath(target_dir), profile, "apisix-stream")
        if not a.no_build:
            argv = ["cargo", "build", "--locked"] + ([] if a.debug else ["--release"])
            say(f"building {profile} binary: {' '.join(argv)}")
            if subprocess.run(argv, cwd=ROOT, check=False).returncode != 0:
                raise Failed("cargo build failed")
    if not os.access(path, os.X_OK):
        raise Failed(f"{path} is not an executable file")
    return path


def say(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Context:
    """What every suite shares: options, processes, folders, the binary."""

    def __init__(self, a, work, folder, binary_path):
        self.rounds, self.duration, self.tls_duration = a.rounds, a.duration, a.tls_duration
        self.idle_conns = a.idle_conns
        self.tls_clients, self.tls_streams = a.tls_clients, a.tls_streams
        self.tls_keys, self.tls_versions = a.keys, a.tls_versions
        self.tls_idle_conns, self.redis_requests = a.tls_idle_conns, a.redis_requests
        self.smoke = a.smoke
        self.work, self.folder = work, folder
        self.raw = os.path.join(folder, "raw")
        self.binary = binary_path
        self.ports = Ports(a.port_base)
        self.cpus = len(os.sched_getaffinity(0))
        self.procs = proc.Procs(os.path.join(work, "logs"))
        self.busy_rounds = []

    def round_load(self, suite, rnd, worst):
        """Warn when other work took a share of the machine in this round."""
        others, steal, target = worst
        if others + steal > BUSY_WARN:
            say(f"warning: in round {rnd} other processes used {others}% of the CPUs and "
                f"{steal}% was stolen (while {target} ran): this round's figures are unreliable")
            self.busy_rounds.append({"suite": suite.name, "round": rnd, "target": target,
                                     "others_pct": others, "steal_pct": steal})


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "?")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    osname = "?"
    try:
        with open("/etc/os-release") as f:
            osname = next((ln.split("=", 1)[1].strip().strip('"') for ln in f
                           if ln.startswith("PRETTY_NAME=")), "?")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": model, "memory_gib": round(mem, 1), "kernel": os.uname().release,
            "os": osname}


def versions(binary_path, targets, suites):
    first = lambda s: s.strip().splitlines()[0]  # noqa: E731
    word = lambda i: lambda s: first(s).split()[i]  # noqa: E731
    v = {"apisix-stream": proc.version([binary_path, "--version"], lambda s: first(s).split()[-1])}
    git = proc.version(["git", "-C", ROOT, "describe", "--always", "--dirty"], first)
    v["apisix-stream commit"] = git
    want = set(targets) | {"nginx"}
    if "l4" in suites:
        want |= {"iperf3", "wrk", "dnsperf", "dnsmasq"}
    if "tls" in suites:
        want |= {"openssl"}
    if "redis" in suites:
        want |= {"redis-server"}
    table = {
        "nginx": (["nginx", "-v"], lambda s: first(s).rsplit("/", 1)[-1]),
        "haproxy": (["haproxy", "-v"], word(2)),
        "dnsdist": (["dnsdist", "--version"], word(1)),
        "iperf3": (["iperf3", "--version"], word(1)),
        "wrk": (["wrk", "-v"], word(1)),
        "dnsperf": (["dnsperf", "-h"], lambda s: next(
            ln.split()[1] for ln in s.splitlines() if ln.startswith("Version"))),
        "dnsmasq": ([shutil.which("dnsmasq", path=os.environ.get("PATH", "") + ":/usr/sbin")
                     or "dnsmasq", "--version"], word(2)),
        "openssl": (["openssl", "version"], word(1)),
        "redis-server": (["redis-server", "--version"], lambda s: next(
            w.split("=", 1)[1] for w in s.split() if w.startswith("v="))),
    }
    for name in sorted(want):
        if name in table:
            v[name] = proc.version(*table[name])
    v["python3"] = sys.version.split()[0]
    return v


def main(argv=None):
    a = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(a)
    except Failed as e:
        say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def run(a):
    targets = pick_targets(a)
    missing = sorted({t for s in a.suites for t in TOOLS[s] if not have(t)})
    if missing:
        raise Failed(f"not installed: {', '.join(missing)}; run benches/install.sh")
    bin_path = binary(a)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.idle_conns * 2 + 500 > hard:
        a.idle_conns = max(10, (hard - 500) // 2)
        say(f"open-file limit is {hard}: memory rows use {a.idle_conns} connections")
    if a.tls_idle_conns * 2 + 500 > hard:
        a.tls_idle_conns = max(10, (hard - 500) // 2)
        say(f"open-file limit is {hard}: the T5 row uses {a.tls_idle_conns} connections")
    ports = Ports(a.port_base)
    busy = [p for p in ports.all() if not proc.port_free(p)]
    if busy:
        raise Failed(f"ports {busy} are in use; pick another --port-base")

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = os.path.abspath(a.out or os.path.join(ROOT, "target", "bench", f"report-{stamp}"))
    os.makedirs(os.path.join(folder, "raw"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="apisix-stream-bench.")
    os.makedirs(os.path.join(work, "logs"))
    ctx = Context(a, work, folder, bin_path)

    # every suite plans its steps first, so the time left covers the whole run
    progress = Progress(a.rounds)
    runs = {}
    if "l4" in a.suites:
        runs["l4"] = l4.Run(ctx, Suite("l4", l4.METRICS, targets), progress)
    if "tls" in a.suites:
        tls_targets = [t for t in targets if t in ("nginx", "haproxy", "apisix-stream")]
        runs["tls"] = tls.Run(ctx, Suite("tls", tls.metrics(a.keys, a.tls_versions),
                                         tls_targets), progress)
    if "redis" in a.suites:
        runs["redis"] = redis.Run(ctx, Suite("redis", redis.METRICS, redis.targets_of(targets),
                                             redis.PAIRS), progress)
    for r in runs.values():
        r.plan()
    if "routes" in a.suites:
        progress.add(sum(external.route_seconds(n) for n in a.route_counts))
    if "held" in a.suites:
        progress.add(120)
    say(f"{a.rounds} round(s); suites: {', '.join(a.suites)}; targets: {', '.join(targets)}; "
        f"binary: {bin_path}; about {clock(sum(progress.plan))} in all")
    say(f"report folder: {folder}")

    started = time.monotonic()
    doc_suites, failed = {}, []
    finished = False
    try:
        for name, r in runs.items():
            failed += r.run()
            ctx.procs.stop_all()
            print(f"\n{name} suite:\n{r.suite.table()}\n", flush=True)
            doc_suites[name] = getattr(r, "summary", r.suite.summary)()
        for name, fn in (("routes", lambda: external.run_routes(ctx, progress,
                                                                 a.route_counts)),
                         ("held", lambda: external.run_held(ctx, progress, a.held_conns))):
            if name in a.suites:
                try:
                    doc_suites[name] = fn()
                except Failed as e:
                    say(f"error: {e}")
                    doc_suites[name] = {"error": str(e)}
                    failed.append(name)
        finished = True
    finally:
        ctx.procs.stop_all()
        if a.keep or failed or not finished:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    doc = {
        "schema": 1,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "benches/run.sh " + " ".join(map(shlex.quote, sys.argv[1:])),
        "machine": machine(),
        "versions": versions(bin_path, targets, a.suites),
        "options": {"rounds": a.rounds, "duration_s": a.duration,
                    "tls_duration_s": a.tls_duration, "idle_conns": a.idle_conns,
                    "targets": targets, "suites": a.suites, "tls_keys": a.keys,
                    "tls_versions": a.tls_versions, "tls_idle_conns": a.tls_idle_conns,
                    "redis_requests": a.redis_requests},
        "busy_rounds": ctx.busy_rounds,
        "suites": doc_suites,
        "charts": [],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    report.write(doc, folder, a.json)
    latest = os.path.join(os.path.dirname(folder), "latest")
    if os.path.islink(latest) or not os.path.exists(latest):
        try:
            if os.path.islink(latest):
                os.remove(latest)
            os.symlink(folder, latest)
        except OSError:
            pass
    say(f"done in {clock(doc['elapsed_s'])}; report: {folder}/summary.md")
    if ctx.busy_rounds:
        say(f"warning: {len(ctx.busy_rounds)} round(s) ran on a busy machine (see summary.md)")
    if a.smoke:
        bad = report.check(os.path.join(folder, "results.json"), a.suites, l4.METRICS,
                           tls.SMOKE_ROWS + redis.SMOKE_ROWS)
        for b in bad:
            say(f"smoke: {b}")
        if bad:
            return 1
        say("smoke: every key of results.json is written")
    return 1 if failed else 0
