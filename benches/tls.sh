#!/usr/bin/env bash
# tls.sh: TLS termination benchmark, apisix-stream next to nginx `stream` + `ssl`.
#
# Both proxies terminate TLS on 127.0.0.1 with the same self-signed certificate
# (RSA-2048 by default, `--key ecdsa` for ECDSA P-256) for the name bench.test
# and relay the plain bytes to loopback backends. The same client programs run
# through each proxy in turn, round after round (the order alternates), and the
# table shows medians and the median of the per-round ratios apisix-stream/nginx.
#
#   benches/tls.sh                         # builds target/release/apisix-stream if missing
#   benches/tls.sh --repeat 5 --json target/bench/tls.json
#
# Workloads (each runs --duration seconds per target per round):
#   T1 full handshakes: new TCP connection, full TLS handshake (no session
#      cache, no tickets, no resumption), read a 3-byte reply that the backend
#      sends through the proxy, close; --clients parallel client processes.
#   T2 upload: --streams TLS connections each write as fast as they can; the
#      proxy decrypts and relays into a sink backend.
#   T3 download: a backend writes as fast as it can into --streams
#      connections; the proxy encrypts; the clients read.
# "proxy CPU per ..." rows divide the user+system CPU time of the proxy's
# processes during the workload by the work done (steadier than the rates on a
# shared machine; lower is better).
#
# Needs nginx with the stream and stream_ssl modules, openssl, socat, python3,
# curl and ss. Everything listens on 127.0.0.1 only; every process the script
# starts is stopped when it exits, Ctrl-C included.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOF
usage: $0 [options]
  --apisix-stream PATH  binary to benchmark (default: target/release/apisix-stream)
  --no-build            never run cargo (by default the release binary is built only
                        when it is missing)
  --json FILE           write the numbers as JSON to FILE
  --repeat N            rounds, each running both proxies in turn; the order
                        alternates between rounds (default 3)
  --duration S          seconds per workload per proxy (default 5)
  --clients N           parallel handshake clients for T1 (default 8)
  --streams N           parallel connections for T2 and T3 (default 4)
  --key rsa|ecdsa       certificate key: RSA-2048 or ECDSA P-256 (default rsa)
  --tls 1.2|1.3         highest TLS version the clients offer (default 1.3)
  --port-base P         first of the loopback ports used (default 19000; uses P..P+200)
  --keep                keep the work folder (configs, logs, raw outputs)
  -h, --help            this help
EOF
}

APISIX_BIN="" NO_BUILD=0 JSON_OUT="" REPEAT=3 DURATION=5 CLIENTS=8 STREAMS=4 KEY_TYPE=rsa
TLS_MAX=1.3 PORT_BASE=19000 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --apisix-stream) APISIX_BIN=${2:?}; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    --json) JSON_OUT=${2:?}; shift 2 ;;
    --repeat) REPEAT=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --clients) CLIENTS=${2:?}; shift 2 ;;
    --streams) STREAMS=${2:?}; shift 2 ;;
    --key) KEY_TYPE=${2:?}; shift 2 ;;
    --tls) TLS_MAX=${2:?}; shift 2 ;;
    --port-base) PORT_BASE=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for n in "$REPEAT" "$DURATION" "$CLIENTS" "$STREAMS" "$PORT_BASE"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "'$n' is not a positive whole number"
done
case "$KEY_TYPE" in rsa|ecdsa) ;; *) die "--key must be rsa or ecdsa" ;; esac
case "$TLS_MAX" in 1.2|1.3) ;; *) die "--tls must be 1.2 or 1.3" ;; esac
[ "$PORT_BASE" -le 65000 ] || die "--port-base must leave room for P+200"
if [ -n "$JSON_OUT" ]; then # relative to the caller's folder
  case "$JSON_OUT" in /*) ;; *) JSON_OUT=$PWD/$JSON_OUT ;; esac
fi

# ---------------------------------------------------------------- checks
for tool in nginx openssl socat python3 curl ss; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (see ../shared/bench/install.sh; socat and openssl come from apt too)"
done
if [ -z "$APISIX_BIN" ]; then
  APISIX_BIN=$ROOT/target/release/apisix-stream
  if [ ! -x "$APISIX_BIN" ]; then
    [ "$NO_BUILD" = 1 ] && die "$APISIX_BIN is missing and --no-build was given"
    log "building $APISIX_BIN"
    (cd "$ROOT" && cargo build --release --locked) || die "cargo build failed"
  fi
fi
[ -x "$APISIX_BIN" ] || die "--apisix-stream $APISIX_BIN is not an executable file"
APISIX_BIN=$(cd "$(dirname "$APISIX_BIN")" && pwd)/$(basename "$APISIX_BIN")

NGINX_MODULES=""
if nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
  for d in /usr/lib/nginx/modules /usr/share/nginx/modules /usr/lib64/nginx/modules; do
    if [ -f "$d/ngx_stream_module.so" ]; then
      NGINX_MODULES="load_module $d/ngx_stream_module.so;"
      break
    fi
  done
  [ -n "$NGINX_MODULES" ] || die "nginx stream module not found (Debian: apt-get install libnginx-mod-stream)"
fi
nginx -V 2>&1 | grep -q -- '--with-stream_ssl_module' || die "this nginx has no stream_ssl_module"

# Every handshake costs a few descriptors and a TIME_WAIT entry; be generous.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- ports
P=$PORT_BASE
B_REPLY=$((P + 1)) B_SINK=$((P + 2)) B_SOURCE=$((P + 3))              # backends
F_HS=$((P + 101)) F_UP=$((P + 102)) F_DOWN=$((P + 103))               # TLS front ends
A_ADMIN=$((P + 180)) A_CONTROL=$((P + 190)) A_METRICS=$((P + 191))    # apisix-stream APIs
for port in $B_REPLY $B_SINK $B_SOURCE $F_HS $F_UP $F_DOWN $A_ADMIN $A_CONTROL $A_METRICS; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    die "port $port is already in use; pick another --port-base"
  fi
done

# ---------------------------------------------------------------- processes
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tlsbench.XXXXXX")
chmod 755 "$WORK" # nginx workers may run as an unprivileged user
mkdir -p "$WORK/logs" "$WORK/raw" "$WORK/cert"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
PIDS=()
FAILED=1        # until the report is written
TARGET_FAILED=0 # a proxy that did not start or pass traffic

stop_pid() { # stop_pid PID: TERM, then KILL after 3 s
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  PIDS=()
  if [ "$KEEP" = 1 ] || [ "$FAILED" = 1 ] || [ "$TARGET_FAILED" = 1 ]; then
    log "work folder kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD in the background, log to logs/NAME.log; sets LAST_PID
start() {
  local name=$1; shift
  "$@" >"$WORK/logs/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

forget_pid() { # drop a stopped PID from the cleanup list
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

wait_listen() { # wait_listen PID PORT...: until all listen (TCP), the process alive
  local pid=$1 i port ok; shift
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 1
    ok=1
    for port in "$@"; do
      ss -Hltn "sport = :$port" | grep -q . || { ok=0; break; }
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- helper
# The load generators, the CPU sampler and the report, in one python3 file.
LIB="$WORK/tlslib.py"
cat >"$LIB" <<'PYEOF'
"""TLS clients, CPU accounting and the report for tls.sh (standard library only)."""
import argparse
import json
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import time

SNI = "bench.test"
REPLY = b"ok\n"


def context(tls_max):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # self-signed; the certificate is checked in `check`
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_TICKET
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = (ssl.TLSVersion.TLSv1_3 if tls_max == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    return ctx


def connect(ctx, port, timeout=10.0):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # a fresh SSLSocket and no `session=`: every handshake is a full one
    return ctx.wrap_socket(raw, server_hostname=SNI)


def read_reply(s):
    got = b""
    while len(got) < len(REPLY):
        chunk = s.recv(64)
        if not chunk:
            break
        got += chunk
    return got


# -------------------------------------------------------------- workers
def hs_worker(a):
    port, tls_max, start, stop = a
    ctx = context(tls_max)
    done = errors = 0
    while time.time() < start:
        time.sleep(0.001)
    while time.time() < stop:
        try:
            s = connect(ctx, port)
            ok = read_reply(s) == REPLY
            s.close()
        except (OSError, ValueError):
            ok = False
        if ok:
            done += 1
        else:
            errors += 1
            time.sleep(0.01)
    return done, errors, time.time() - start


def up_worker(a):
    port, tls_max, start, stop = a
    buf = memoryview(bytes(256 * 1024))
    sent = 0
    try:
        s = connect(ctx=context(tls_max), port=port)
    except OSError as e:
        return 0, 1, 0.0, str(e)
    while time.time() < start:
        time.sleep(0.001)
    try:
        while time.time() < stop:
            s.sendall(buf)
            sent += len(buf)
        err = ""
    except OSError as e:
        err = str(e)
    elapsed = time.time() - start
    s.close()
    return sent, 1 if err else 0, elapsed, err


def down_worker(a):
    port, tls_max, start, stop = a
    buf = bytearray(256 * 1024)
    got = 0
    try:
        s = connect(ctx=context(tls_max), port=port)
        while time.time() < start:  # drain whatever arrives before the start
            s.recv_into(buf)
    except OSError as e:
        return 0, 1, 0.0, str(e)
    try:
        while True:
            n = s.recv_into(buf)
            if not n:
                raise OSError("the proxy closed the connection")
            got += n
            if time.time() >= stop:
                break
        err = ""
    except OSError as e:
        err = str(e)
    elapsed = time.time() - start
    s.close()
    return got, 1 if err else 0, elapsed, err


def run_parallel(fn, n, port, tls_max, seconds):
    start = time.time() + 0.5  # every process connects, then all start together
    args = [(port, tls_max, start, start + seconds)] * n
    with multiprocessing.get_context("fork").Pool(n) as pool:
        return pool.map(fn, args)


def cmd_hs(a):
    res = run_parallel(hs_worker, a.clients, a.port, a.tls, a.seconds)
    done = sum(r[0] for r in res)
    errors = sum(r[1] for r in res)
    elapsed = max(r[2] for r in res)
    print(f"handshakes={done}")
    print(f"errors={errors}")
    print(f"rate={done / elapsed:.1f}")
    return 0 if done else 1


def cmd_bulk(a):
    fn = up_worker if a.direction == "up" else down_worker
    res = run_parallel(fn, a.streams, a.port, a.tls, a.seconds)
    total = sum(r[0] for r in res)
    errors = sum(r[1] for r in res)
    rate = sum(r[0] / r[2] for r in res if r[2] > 0)
    for r in res:
        if r[3]:
            print(f"error: {r[3]}", file=sys.stderr)
    print(f"bytes={total}")
    print(f"errors={errors}")
    print(f"mbps={rate / 1e6:.1f}")
    return 0 if total and not errors else 1


def cmd_check(a):
    """One handshake on each front end: the certificate is the expected one,
    the reply arrives, the sink takes 1 MiB, the source sends 1 MiB."""
    ctx = context(a.tls)
    with open(a.cert) as f:
        want = ssl.PEM_cert_to_DER_cert(f.read())
    s = connect(ctx, a.hs_port, timeout=5)
    if s.getpeercert(binary_form=True) != want:
        print(f"{a.hs_port}: the server presents another certificate", file=sys.stderr)
        return 1
    version, cipher = s.version(), s.cipher()[0]
    got = read_reply(s)
    s.close()
    if got != REPLY:
        print(f"{a.hs_port}: expected {REPLY!r} from the backend, got {got!r}", file=sys.stderr)
        return 1
    s = connect(ctx, a.up_port, timeout=5)
    s.sendall(bytes(1 << 20))
    s.close()
    s = connect(ctx, a.down_port, timeout=5)
    buf, got = bytearray(65536), 0
    while got < (1 << 20):
        n = s.recv_into(buf)
        if not n:
            print(f"{a.down_port}: closed after {got} bytes", file=sys.stderr)
            return 1
        got += n
    s.close()
    print(f"{version} {cipher}")
    return 0


# -------------------------------------------------------------- CPU
def _tree(root):
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cmd_cpu(a):
    """CPU seconds (user + system) used so far by PID and its children."""
    total = 0
    for pid in _tree(a.pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    print(f"{total / os.sysconf('SC_CLK_TCK'):.2f}")
    return 0


def cmd_busy(a):
    """Percent of all CPUs busy (not idle or iowait) over the next `seconds`."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = sample()
    time.sleep(a.seconds)
    t1, i1 = sample()
    print(f"{100 * (1 - (i1 - i0) / max(1, t1 - t0)):.1f}")
    return 0


# -------------------------------------------------------------- report
METRICS = [
    ("t1_handshakes_per_s", "T1 full TLS handshakes", "per s", "higher"),
    ("t1_cpu_us_per_handshake", "T1 proxy CPU per handshake", "us", "lower"),
    ("t2_upload_mbps", "T2 bulk TLS upload (client->backend)", "MB/s", "higher"),
    ("t2_cpu_ms_per_gb", "T2 proxy CPU per GB", "ms", "lower"),
    ("t3_download_mbps", "T3 bulk TLS download (backend->client)", "MB/s", "higher"),
    ("t3_cpu_ms_per_gb", "T3 proxy CPU per GB", "ms", "lower"),
    ("errors", "failed connections / handshakes", "count", "lower"),
    ("background_busy_pct", "CPU busy just before the target", "%", "lower"),
]
TARGET, ANCHOR = "apisix-stream", "nginx"
NOISY = 0.15
BUSY_WARN = 10.0


def spread(vals):
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / 2 / abs(m) if len(vals) > 1 and m else 0.0


def fmt(v):
    if v is None:
        return "-"
    if float(v).is_integer():
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cmd_report(a):
    targets = [ANCHOR, TARGET]
    by_round = {}  # metric -> target -> {round: value}
    with open(a.results) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4 or parts[3] in ("", "NA"):
                continue
            rnd, target, metric, value = parts
            by_round.setdefault(metric, {}).setdefault(target, {})[rnd] = float(value)
    out = {"metrics": {}}
    for k, v in (kv.split("=", 1) for kv in a.meta):
        if k.startswith("version_"):
            out.setdefault("versions", {})[k[len("version_"):]] = v
        else:
            out[k] = v
    out["targets"] = targets
    rows = []
    for key, label, unit, better in METRICS:
        per = {t: list(by_round.get(key, {}).get(t, {}).values()) for t in targets}
        med = {t: (round(statistics.median(v), 3) if v else None) for t, v in per.items()}
        rx = by_round.get(key, {}).get(TARGET, {})
        ry = by_round.get(key, {}).get(ANCHOR, {})
        pr = [rx[n] / ry[n] for n in rx if n in ry and ry[n]]
        ratio = round(statistics.median(pr), 3) if pr and key != "background_busy_pct" else None
        spr = {t: round(spread(v), 3) for t, v in per.items() if v}
        out["metrics"][key] = {
            "label": label, "unit": unit, "better": better, "median": med,
            "rounds": per, "spread": spr, "ratios": {f"{TARGET}/{ANCHOR}": ratio},
        }
        rows.append((f"{label} ({unit})", better, med, ratio, spr, per))

    cols = targets + [f"{TARGET}/{ANCHOR}"]
    w0 = max(len(r[0]) for r in rows)
    widths = [max(9, len(c)) for c in cols]
    head = f"{'workload (median of rounds)':<{w0}}  " + "  ".join(
        f"{c:>{w}}" for c, w in zip(cols, widths)) + "  better"
    print(head)
    print("-" * len(head))
    noisy = False
    for name, better, med, ratio, spr, _ in rows:
        cells = []
        for t in targets:
            mark = "*" if spr.get(t, 0) > NOISY else ""
            noisy = noisy or bool(mark)
            cells.append(fmt(med[t]) + mark)
        cells.append(fmt(ratio))
        print(f"{name:<{w0}}  " + "  ".join(
            f"{c:>{w}}" for c, w in zip(cells, widths)) + f"  {better}")
    print("Ratios are medians of per-round ratios; > 1 is better for 'higher' rows, "
          "< 1 for 'lower' rows.")
    busy = [v for v in by_round.get("background_busy_pct", {}).get(ANCHOR, {}).values()]
    busy += [v for v in by_round.get("background_busy_pct", {}).get(TARGET, {}).values()]
    if busy and max(busy) > BUSY_WARN:
        print(f"warning: the machine was up to {max(busy):.0f}% busy with something else "
              "between targets: these numbers are unreliable.")
    if noisy:
        print(f"*: its rounds differ by more than ±{NOISY:.0%} of the median (a noisy cell).")
    print("\nper-round values:")
    for name, _, _, _, _, per in rows:
        cells = [f"{t}: " + " ".join(fmt(v) for v in per[t]) for t in targets if per[t]]
        if cells:
            print(f"  {name}: " + " | ".join(cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("hs")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--clients", type=int, default=4)
    s.add_argument("--seconds", type=float, default=5)
    s.add_argument("--tls", default="1.3")
    s.set_defaults(fn=cmd_hs)
    s = sub.add_parser("bulk")
    s.add_argument("direction", choices=["up", "down"])
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--streams", type=int, default=2)
    s.add_argument("--seconds", type=float, default=5)
    s.add_argument("--tls", default="1.3")
    s.set_defaults(fn=cmd_bulk)
    s = sub.add_parser("check")
    s.add_argument("--hs-port", type=int, required=True)
    s.add_argument("--up-port", type=int, required=True)
    s.add_argument("--down-port", type=int, required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--tls", default="1.3")
    s.set_defaults(fn=cmd_check)
    s = sub.add_parser("cpu")
    s.add_argument("--pid", type=int, required=True)
    s.set_defaults(fn=cmd_cpu)
    s = sub.add_parser("busy")
    s.add_argument("--seconds", type=float, default=0.5)
    s.set_defaults(fn=cmd_busy)
    s = sub.add_parser("report")
    s.add_argument("--results", required=True)
    s.add_argument("--json")
    s.add_argument("--meta", action="append", default=[])
    s.set_defaults(fn=cmd_report)
    a = p.parse_args()
    try:
        sys.exit(a.fn(a))
    except (OSError, ValueError) as e:
        print(f"{a.cmd}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
PYEOF

# ---------------------------------------------------------------- certificate
CERT=$WORK/cert/bench.test.crt
KEY=$WORK/cert/bench.test.key
make_cert() {
  local keyopt=(-newkey rsa:2048)
  [ "$KEY_TYPE" = ecdsa ] && keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
  openssl req -x509 "${keyopt[@]}" -nodes -days 2 -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test -keyout "$KEY" -out "$CERT" \
    >"$WORK/logs/openssl.log" 2>&1 || die "openssl could not make the certificate (see $WORK/logs/openssl.log)"
}

# ---------------------------------------------------------------- backends
start_backends() {
  local d="$WORK/backend"
  mkdir -p "$d"
  # B_REPLY: answers every connection with "ok\n" and closes (T1 and the checks)
  cat >"$d/nginx.conf" <<EOF
$NGINX_MODULES
worker_processes 1;
pid $d/nginx.pid;
daemon off;
events { worker_connections 16384; }
stream {
  server { listen 127.0.0.1:$B_REPLY reuseport backlog=4096; return "ok\n"; }
}
EOF
  start backend-reply nginx -p "$d/" -e "$WORK/logs/backend-reply.error.log" -c "$d/nginx.conf"
  wait_listen "$LAST_PID" "$B_REPLY" || die "backend nginx did not start (see $WORK/logs)"
  # B_SINK: reads and discards (T2); B_SOURCE: writes zeros until the peer goes (T3)
  start backend-sink socat -u -b 262144 TCP-LISTEN:"$B_SINK",bind=127.0.0.1,fork,reuseaddr,backlog=1024 OPEN:/dev/null
  wait_listen "$LAST_PID" "$B_SINK" || die "socat sink did not start"
  start backend-source socat -u -b 262144 OPEN:/dev/zero TCP-LISTEN:"$B_SOURCE",bind=127.0.0.1,fork,reuseaddr,backlog=1024
  wait_listen "$LAST_PID" "$B_SOURCE" || die "socat source did not start"
}

# ---------------------------------------------------------------- proxies
start_proxy() { # start_proxy TARGET: sets PROXY_PID; checks traffic through it
  local t=$1 i ok=0
  PROXY_PID=""
  case "$t" in
    nginx) start_nginx ;;
    apisix-stream) start_apisix_stream ;;
  esac || return 1
  for i in $(seq 20); do
    if python3 "$LIB" check --hs-port "$F_HS" --up-port "$F_UP" --down-port "$F_DOWN" \
      --cert "$CERT" --tls "$TLS_MAX" >"$WORK/raw/check-$t.txt" 2>&1; then
      ok=1
      break
    fi
    sleep 0.25
  done
  if [ "$ok" = 0 ]; then
    log "$t: TLS through the proxy fails: $(tail -n 1 "$WORK/raw/check-$t.txt")"
    return 1
  fi
  NEGOTIATED=$(cat "$WORK/raw/check-$t.txt")
  log "  $t: $NEGOTIATED"
}

stop_proxy() {
  if [ -n "$PROXY_PID" ]; then
    stop_pid "$PROXY_PID"
    forget_pid "$PROXY_PID"
    PROXY_PID=""
  fi
}

start_nginx() {
  local d="$WORK/nginx" port backend srv=""
  mkdir -p "$d"
  for port in "$F_HS:$B_REPLY" "$F_UP:$B_SINK" "$F_DOWN:$B_SOURCE"; do
    backend=${port#*:}
    srv+="  server { listen 127.0.0.1:${port%%:*} ssl reuseport backlog=4096; proxy_pass 127.0.0.1:$backend; }"$'\n'
  done
  cat >"$d/nginx.conf" <<EOF
$NGINX_MODULES
worker_processes auto;
worker_rlimit_nofile 65536;
pid $d/nginx.pid;
daemon off;
events { worker_connections 16384; }
stream {
  # no access_log in stream{} unless configured: nothing is logged per connection
  ssl_certificate $CERT;
  ssl_certificate_key $KEY;
  ssl_protocols TLSv1.2 TLSv1.3;
  # every handshake is a full one
  ssl_session_cache off;
  ssl_session_tickets off;
$srv}
EOF
  start nginx nginx -p "$d/" -e "$WORK/logs/nginx.error.log" -c "$d/nginx.conf"
  PROXY_PID=$LAST_PID
  wait_listen "$PROXY_PID" "$F_HS" "$F_UP" "$F_DOWN"
}

# admin_put KEY PATH JSON_FILE: PUT one object through the Admin API
admin_put() {
  local out code
  out="$WORK/logs/put-$(echo "$2" | tr / _).json"
  code=$(curl -s -m 10 -o "$out" -w '%{http_code}' -X PUT \
    "http://127.0.0.1:$A_ADMIN/apisix/admin/$2" \
    -H "X-API-KEY: $1" -H 'Content-Type: application/json' --data-binary "@$3")
  case "$code" in 200|201) return 0 ;; esac
  log "apisix-stream: PUT $2 answered $code: $(cat "$out" 2>/dev/null)"
  return 1
}

start_apisix_stream() {
  local d="$WORK/apisix-stream" key i pair
  key=bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  mkdir -p "$d"
  cat >"$d/config.yaml" <<EOF
apisix:
  proxy_mode: stream
  stream_proxy:
    tcp:
      - {addr: "127.0.0.1:$F_HS", tls: true}
      - {addr: "127.0.0.1:$F_UP", tls: true}
      - {addr: "127.0.0.1:$F_DOWN", tls: true}
  enable_control: true
  control: {ip: 127.0.0.1, port: $A_CONTROL}
deployment:
  role: traditional
  role_traditional:
    config_provider: local
  admin:
    admin_key:
      - {name: admin, key: '$key', role: admin}
    admin_listen: {ip: 127.0.0.1, port: $A_ADMIN}
    allow_admin: [127.0.0.0/24]
plugin_attr:
  prometheus:
    export_addr: {ip: 127.0.0.1, port: $A_METRICS}
EOF
  python3 - "$CERT" "$KEY" >"$d/ssl.json" <<'EOF'
import json, sys
cert, key = (open(p).read() for p in sys.argv[1:3])
print(json.dumps({"cert": cert, "key": key, "snis": ["bench.test"]}))
EOF
  start apisix-stream "$APISIX_BIN" serve -c "$d/config.yaml"
  PROXY_PID=$LAST_PID
  wait_listen "$PROXY_PID" "$A_ADMIN" || { log "apisix-stream: admin API did not come up"; return 1; }
  admin_put "$key" ssls/1 "$d/ssl.json" || return 1
  i=0
  for pair in "$F_HS:$B_REPLY" "$F_UP:$B_SINK" "$F_DOWN:$B_SOURCE"; do
    i=$((i + 1))
    printf '{"server_port": %s, "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:%s": 1}}}\n' \
      "${pair%%:*}" "${pair#*:}" >"$d/route-$i.json"
    admin_put "$key" "stream_routes/$i" "$d/route-$i.json" || return 1
  done
  wait_listen "$PROXY_PID" "$F_HS" "$F_UP" "$F_DOWN"
}

# ---------------------------------------------------------------- workloads
record() { printf '%s\t%s\t%s\t%s\n' "$ROUND" "$TARGET" "$1" "$2" >>"$RESULTS"; }
proxy_cpu() { python3 "$LIB" cpu --pid "$PROXY_PID"; }
# record_cpu METRIC CPU_BEFORE UNITS SCALE: record SCALE * proxy CPU seconds / UNITS
record_cpu() {
  local after
  [ -n "$2" ] && [ "$3" != 0 ] || return 0
  after=$(proxy_cpu) || return 0
  record "$1" "$(awk "BEGIN { printf \"%.3f\", $4 * ($after - $2) / $3 }")"
}
val() { sed -n "s/^$1=//p" "$2"; } # val KEY FILE: value of a key=value line

ERRORS=0
t1_handshakes() {
  local out cpu n rate errs
  out="$WORK/raw/r$ROUND-$TARGET-t1.txt"
  cpu=$(proxy_cpu)
  timeout $((DURATION + 30)) python3 "$LIB" hs --port "$F_HS" --clients "$CLIENTS" \
    --seconds "$DURATION" --tls "$TLS_MAX" >"$out" 2>&1
  n=$(val handshakes "$out") rate=$(val rate "$out") errs=$(val errors "$out")
  if [ -z "$rate" ] || [ "${n:-0}" = 0 ]; then log "  T1 failed (see $out)"; ERRORS=$((ERRORS + 1)); return; fi
  record t1_handshakes_per_s "$rate"
  record_cpu t1_cpu_us_per_handshake "$cpu" "$n" 1e6
  ERRORS=$((ERRORS + errs))
  log "  T1 full handshakes: $rate/s ($errs failed)"
}

# t_bulk up|down METRIC_PREFIX LABEL PORT
t_bulk() {
  local dir=$1 m=$2 label=$3 port=$4 out cpu bytes mbps errs
  out="$WORK/raw/r$ROUND-$TARGET-$m.txt"
  cpu=$(proxy_cpu)
  timeout $((DURATION + 30)) python3 "$LIB" bulk "$dir" --port "$port" --streams "$STREAMS" \
    --seconds "$DURATION" --tls "$TLS_MAX" >"$out" 2>&1
  bytes=$(val bytes "$out") mbps=$(val mbps "$out") errs=$(val errors "$out")
  ERRORS=$((ERRORS + ${errs:-1}))
  if [ -z "$mbps" ] || [ "${bytes:-0}" = 0 ] || [ "${errs:-1}" != 0 ]; then
    log "  $label failed (see $out)"
    return
  fi
  record "${m}_${dir}load_mbps" "$mbps"
  record_cpu "${m}_cpu_ms_per_gb" "$cpu" "$bytes" 1e12
  log "  $label: $mbps MB/s"
}

run_target() {
  local busy
  TARGET=$1
  log "round $ROUND/$REPEAT: $TARGET"
  busy=$(python3 "$LIB" busy --seconds 0.5) || busy=0
  record background_busy_pct "$busy"
  if awk "BEGIN { exit !($busy > 10) }"; then
    log "  warning: CPUs are $busy% busy with other work; this round will be noisy"
  fi
  if ! start_proxy "$TARGET"; then
    log "$TARGET did not start or pass TLS traffic; its cells stay empty (logs: $WORK/logs)"
    TARGET_FAILED=1
    stop_proxy
    return
  fi
  ERRORS=0
  t1_handshakes
  sleep 0.5
  t_bulk up t2 "T2 bulk upload" "$F_UP"
  sleep 0.5
  t_bulk down t3 "T3 bulk download" "$F_DOWN"
  record errors "$ERRORS"
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    log "$TARGET exited during the run (logs: $WORK/logs)"
    TARGET_FAILED=1
  fi
  stop_proxy
  sleep 1 # let the closed connections drain
}

# ---------------------------------------------------------------- main
log "work folder: $WORK; $REPEAT round(s) of ${DURATION}s workloads; binary: $APISIX_BIN"
make_cert
start_backends
STARTED=$(date +%s)
for ROUND in $(seq "$REPEAT"); do
  order=(nginx apisix-stream)
  [ $((ROUND % 2)) = 0 ] && order=(apisix-stream nginx) # alternate to even out drift
  for t in "${order[@]}"; do run_target "$t"; done
done
log "done in $(($(date +%s) - STARTED)) s"

KEYDESC="RSA-2048"
[ "$KEY_TYPE" = ecdsa ] && KEYDESC="ECDSA P-256"
META=(--meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" --meta "cpus=$(nproc)" --meta "kernel=$(uname -r)"
  --meta "repeat=$REPEAT" --meta "duration_s=$DURATION" --meta "clients=$CLIENTS"
  --meta "streams=$STREAMS" --meta "certificate=$KEYDESC" --meta "tls_max=$TLS_MAX"
  --meta "negotiated=${NEGOTIATED:-}"
  --meta "version_nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
  --meta "version_openssl=$(openssl version | awk '{ print $2 }')"
  --meta "version_python3=$(python3 -c 'import platform; print(platform.python_version())')"
  --meta "version_apisix-stream=$("$APISIX_BIN" --version 2>/dev/null | head -1)")

echo
echo "certificate $KEYDESC for bench.test; clients offer up to TLS $TLS_MAX; negotiated: ${NEGOTIATED:-?}"
python3 "$LIB" report --results "$RESULTS" ${JSON_OUT:+--json "$JSON_OUT"} "${META[@]}" || exit 1
FAILED=0
exit "$TARGET_FAILED"
