"""Suites with their own programs in benches/: route scale (routes.py) and
held connections (held.sh). They run as they are, with the binary under
test, and their JSON goes into the report."""

import json
import os
import subprocess
import sys

from .proc import Failed

BENCHES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def route_seconds(n):
    """A guess of how long routes.py takes for one route count."""
    return 8 + n / 400


def run_routes(ctx, progress, counts):
    """benches/routes.py for each route count; returns the suite's JSON."""
    out = os.path.join(ctx.raw, "routes.json")
    progress.begin(None, "apisix-stream", f"route scale, {', '.join(map(str, counts))} routes "
                                       "(benches/routes.py)")
    argv = [sys.executable, os.path.join(BENCHES, "routes.py"), "--bin", ctx.binary,
            "--json", out, "--routes", *map(str, counts)]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
    if r.returncode != 0 or not os.path.exists(out):
        raise Failed(f"routes suite: routes.py exited with status {r.returncode}")
    with open(out) as f:
        rows = json.load(f)
    return {"rows": rows, "command": " ".join(argv[1:])}


def run_held(ctx, progress, conns=None):
    """benches/held.sh --json (its JSON on stdout); returns the suite's JSON."""
    script = os.path.join(BENCHES, "held.sh")
    if not os.access(script, os.X_OK):
        raise Failed("held suite: benches/held.sh is not in this checkout")
    out = os.path.join(ctx.raw, "held.json")
    progress.begin(None, "apisix-stream", "held connections (benches/held.sh)")
    argv = [script, "--json", "--binary", ctx.binary]
    if conns:
        argv += ["--conns", str(conns)]
    with open(out, "w") as f:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, check=False)
    try:
        with open(out) as f:
            data = json.load(f)
    except ValueError as e:
        raise Failed(f"held suite: held.sh exited with status {r.returncode} "
                     f"and printed no JSON ({e})") from e
    if r.returncode != 0:
        raise Failed(f"held suite: held.sh exited with status {r.returncode}")
    return {"data": data, "command": "benches/held.sh --json --binary BIN"}
