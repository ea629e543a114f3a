#!/usr/bin/env bash
# Held connections and syscalls per connection: nginx `stream {}` next to
# apisix-stream, both under the same open-file limit, on loopback.
#
# For each target, on a fresh process:
#   held   N connections opened to an echo backend, each proven by an echo;
#          how many were held, RSS per connection idle, and RSS per
#          connection after each sent and got back 64 KiB, then idled;
#   w2     short connections (wrk, `Connection: close`, to an HTTP backend)
#          for a few seconds: connections/s and proxy CPU per connection;
#          then again under `strace -c -f`: syscalls per connection.
#
#   benches/held.sh [--conns N] [--fd-limit L] [--seconds S] [--binary PATH]
#                   [--targets nginx,apisix-stream] [--port-base P] [--json] [--keep]
#
# Needs: nginx (with the stream module, /usr/lib/nginx/modules is used when
# it is dynamic), wrk, strace, python3. The binary defaults to
# target/release/apisix-stream (else target/debug).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
CONNS=9000
FD_LIMIT=20000
SECONDS_W2=3
BINARY=""
TARGETS="nginx,apisix-stream"
PORT_BASE=19000
JSON=0
KEEP=0

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --conns) CONNS="$2"; shift 2 ;;
    --fd-limit) FD_LIMIT="$2"; shift 2 ;;
    --seconds) SECONDS_W2="$2"; shift 2 ;;
    --binary|--apisix-stream) BINARY="$2"; shift 2 ;;
    --targets) TARGETS="$2"; shift 2 ;;
    --port-base) PORT_BASE="$2"; shift 2 ;;
    --json) JSON=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage 2 ;;
  esac
done
if [ -z "$BINARY" ]; then
  for b in "$ROOT/target/release/apisix-stream" "$ROOT/target/debug/apisix-stream"; do
    if [ -x "$b" ]; then BINARY="$b"; break; fi
  done
fi
for tool in nginx wrk strace python3 prlimit; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || { echo "held.sh needs $tool" >&2; exit 2; }
done
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

WORK="$(mktemp -d /tmp/held.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; else echo "work folder kept: $WORK" >&2; fi
}
trap cleanup EXIT
log() { if [ "$JSON" = 1 ]; then echo "$*" >&2; else echo "$*"; fi; }

ECHO_PORT=$((PORT_BASE + 1))
HTTP_PORT=$((PORT_BASE + 2))
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; return 1
}

# --- backends: a Python echo server and nginx http serving /64b ---------
prlimit --nofile="$FD_LIMIT" python3 "$HERE/held.py" echo "$ECHO_PORT" &
PIDS+=($!)
mkdir -p "$WORK/www" "$WORK/http"
head -c 64 /dev/zero | tr '\0' 'x' > "$WORK/www/64b"
cat > "$WORK/http/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/http/nginx.pid;
error_log $WORK/http/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$HTTP_PORT reuseport; root $WORK/www; }
}
EOF
"$NGINX" -p "$WORK/http" -c "$WORK/http/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port "$ECHO_PORT"
wait_port "$HTTP_PORT"

# --- the proxies --------------------------------------------------------
# Each starts with its echo port at P+100+10k+1 and HTTP port +2; prints
# the PIDs whose memory and syscalls count (nginx: its workers).
start_nginx() {
  local dir="$WORK/nginx" p=$((PORT_BASE + 101))
  mkdir -p "$dir"
  local module=""
  if ! "$NGINX" -V 2>&1 | grep -q -- '--with-stream ' && [ -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    module="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
  fi
  cat > "$dir/nginx.conf" <<EOF
$module
worker_processes auto;
worker_rlimit_nofile $FD_LIMIT;
pid $dir/nginx.pid;
error_log $dir/error.log error;
events { worker_connections $FD_LIMIT; }
stream {
  server { listen 127.0.0.1:$p reuseport; proxy_pass 127.0.0.1:$ECHO_PORT; }
  server { listen 127.0.0.1:$((p + 1)) reuseport; proxy_pass 127.0.0.1:$HTTP_PORT; }
}
EOF
  prlimit --nofile="$FD_LIMIT" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
  TARGET_MAIN=$!
  TARGET_PORT=$p
  wait_port "$p"
  sleep 0.3
  TARGET_PIDS="$(pgrep -P "$TARGET_MAIN" | tr '\n' ' ')"
}

start_apisix() {
  local dir="$WORK/apisix-stream" p=$((PORT_BASE + 111))
  mkdir -p "$dir/data"
  local admin=$((PORT_BASE + 180)) control=$((PORT_BASE + 190)) metrics=$((PORT_BASE + 191))
  local key="held-$RANDOM$RANDOM"
  cat > "$dir/config.yaml" <<EOF
apisix:
  proxy_mode: stream
  stream_proxy:
    tcp:
      - "127.0.0.1:$p"
      - "127.0.0.1:$((p + 1))"
  enable_control: true
  control:
    ip: 127.0.0.1
    port: $control
deployment:
  role: traditional
  role_traditional:
    config_provider: local
  local:
    data_dir: "$dir/data"
  admin:
    admin_key:
      - name: admin
        key: $key
        role: admin
    admin_listen:
      ip: 127.0.0.1
      port: $admin
plugin_attr:
  prometheus:
    export_addr:
      ip: 127.0.0.1
      port: $metrics
nginx_config:
  event:
    worker_connections: $FD_LIMIT
EOF
  prlimit --nofile="$FD_LIMIT" "$BINARY" serve -c "$dir/config.yaml" >"$dir/out.log" 2>&1 &
  PIDS+=($!)
  TARGET_MAIN=$!
  TARGET_PORT=$p
  wait_port "$admin"
  for r in 1:$p:$ECHO_PORT 2:$((p + 1)):$HTTP_PORT; do
    IFS=: read -r id port node <<<"$r"
    curl -fsS -X PUT -H "X-API-KEY: $key" "http://127.0.0.1:$admin/apisix/admin/stream_routes/$id" \
      -d "{\"server_port\": $port, \"upstream\": {\"nodes\": {\"127.0.0.1:$node\": 1}}}" >/dev/null
  done
  wait_port "$p"
  TARGET_PIDS="$TARGET_MAIN"
}

stop_target() {
  kill "$TARGET_MAIN" 2>/dev/null || true
  wait "$TARGET_MAIN" 2>/dev/null || true
}

cpu_ticks() {
  local t=0 p
  for p in $1; do
    # utime + stime (fields 14, 15), after the command name.
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$t"
}

# wrk's completed requests (one connection each with Connection: close).
wrk_requests() { awk '/requests in/ {print $1}' "$1"; }

measure() {
  local name="$1" out="$WORK/$1"
  mkdir -p "$out"
  case "$name" in
    nginx) start_nginx ;;
    apisix-stream) start_apisix ;;
  esac
  local pid_args="" p
  for p in $TARGET_PIDS; do pid_args="$pid_args --pid $p"; done
  # shellcheck disable=SC2086
  prlimit --nofile="$FD_LIMIT" python3 "$HERE/held.py" hold "$TARGET_PORT" "$CONNS" $pid_args \
    > "$out/held.json"
  local url="http://127.0.0.1:$((TARGET_PORT + 1))/64b"
  # W2 without tracing: connections/s and CPU per connection.
  local c0 c1
  c0=$(cpu_ticks "$TARGET_PIDS")
  wrk -t1 -c50 -d"${SECONDS_W2}s" -H 'Connection: close' "$url" > "$out/w2.txt" 2>&1 || true
  c1=$(cpu_ticks "$TARGET_PIDS")
  local reqs; reqs=$(wrk_requests "$out/w2.txt")
  # W2 under strace -c -f: syscalls per connection.
  local strace_args="" ; for p in $TARGET_PIDS; do strace_args="$strace_args -p $p"; done
  # shellcheck disable=SC2086
  strace -c -f -o "$out/strace.txt" $strace_args &
  local st=$!
  sleep 0.5
  wrk -t1 -c50 -d"${SECONDS_W2}s" -H 'Connection: close' "$url" > "$out/w2-strace.txt" 2>&1 || true
  kill -INT "$st" 2>/dev/null || true
  wait "$st" 2>/dev/null || true
  local sreqs calls
  sreqs=$(wrk_requests "$out/w2-strace.txt")
  calls=$(awk '$NF == "total" {print $(NF-2)}' "$out/strace.txt")
  stop_target
  python3 - "$name" "$out" "${reqs:-0}" "$((c1 - c0))" "$SECONDS_W2" "${sreqs:-0}" "${calls:-0}" <<'EOF'
import json, sys, os
name, out, reqs, ticks, secs, sreqs, calls = sys.argv[1:]
reqs, ticks, secs, sreqs, calls = int(reqs), int(ticks), float(secs), int(sreqs), int(calls)
held = json.load(open(os.path.join(out, "held.json")))
hz = os.sysconf("SC_CLK_TCK")
top = {}
try:
    for line in open(os.path.join(out, "strace.txt")):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            calls_i = int(f[3])
            top[f[-1]] = calls_i
except OSError:
    pass
res = dict(held)
res["w2_conn_per_s"] = round(reqs / secs) if secs else None
res["w2_cpu_us_per_conn"] = round(ticks * 1e6 / hz / reqs, 1) if reqs else None
res["syscalls_per_conn"] = round(calls / sreqs, 1) if sreqs else None
res["syscalls_top"] = {k: round(v / sreqs, 2) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]} if sreqs else {}
json.dump(res, open(os.path.join(out, "result.json"), "w"))
EOF
}

IFS=, read -r -a WANT <<<"$TARGETS"
for t in "${WANT[@]}"; do
  case "$t" in
    nginx) ;;
    apisix-stream) [ -n "$BINARY" ] || { echo "no apisix-stream binary (build it or pass --binary)" >&2; exit 2; } ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  log "== $t: holding $CONNS connections at fd limit $FD_LIMIT, then W2 for ${SECONDS_W2}s (plain, then under strace)"
  measure "$t"
done

python3 - "$WORK" "$JSON" "$FD_LIMIT" "$CONNS" "${WANT[@]}" <<'EOF'
import json, os, sys
work, as_json, fd_limit, conns, targets = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
results = {t: json.load(open(os.path.join(work, t, "result.json"))) for t in targets}
if as_json:
    print(json.dumps({"suite": "held", "fd_limit": fd_limit, "attempted": conns, "targets": results}, indent=1))
    sys.exit(0)
rows = [
    ("connections held (echoed)", "held", "{}"),
    ("RSS per idle connection", "idle_bytes_per_conn", "{} B"),
    ("RSS per connection after 64 KiB each way", "used_bytes_per_conn", "{} B"),
    ("W2 connections/s", "w2_conn_per_s", "{}"),
    ("W2 proxy CPU per connection", "w2_cpu_us_per_conn", "{} us"),
    ("W2 syscalls per connection (strace -c -f)", "syscalls_per_conn", "{}"),
]
w = max(len(r[0]) for r in rows)
print("%-*s" % (w, "fd limit %d, %d attempted" % (fd_limit, conns)) + "".join("%18s" % t for t in targets))
for label, key, fmt in rows:
    print("%-*s" % (w, label) + "".join("%18s" % (fmt.format(results[t].get(key)) if results[t].get(key) is not None else "-") for t in targets))
for t in targets:
    print("%s syscalls per connection: %s" % (t, ", ".join("%s %s" % kv for kv in results[t].get("syscalls_top", {}).items())))
EOF
