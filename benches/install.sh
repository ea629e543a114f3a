#!/usr/bin/env bash
# Installs the programs benches/run.sh drives (Debian and Ubuntu, apt-get).
#
#   benches/install.sh           # everything: the proxies compared, the load
#                                # generators and the backends
#   benches/install.sh --smoke   # only what `run.sh --smoke` needs (direct and
#                                # apisix-stream): backends, load generators,
#                                # openssl and redis
#
# Packages already installed are left alone. The packaged nginx, haproxy,
# dnsdist, dnsmasq and redis services are not needed (run.sh starts its own
# copies on loopback ports), so service starts are blocked while apt-get runs
# and nothing is left running afterwards.
set -euo pipefail

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  -h | --help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "install.sh: unknown option $1 (try --help)" >&2
    exit 2
    ;;
esac

# program -> Debian package that provides it
SMOKE_PKGS=(
  nginx:nginx iperf3:iperf3 wrk:wrk dnsperf:dnsperf dnsmasq:dnsmasq-base
  python3:python3 curl:curl ss:iproute2 ps:procps openssl:openssl socat:socat
  redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools
)
FULL_PKGS=(
  haproxy:haproxy dnsdist:dnsdist jq:jq strace:strace prlimit:util-linux
)
wanted=("${SMOKE_PKGS[@]}")
[ "$SMOKE" = 1 ] || wanted+=("${FULL_PKGS[@]}")

have() { PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

stream_module_missing() {
  have nginx || return 0
  nginx -V 2>&1 | grep -q -- '--with-stream=dynamic' || return 1
  ! ls /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so \
    >/dev/null 2>&1
}

missing=()
for pair in "${wanted[@]}"; do
  have "${pair%%:*}" || missing+=("${pair#*:}")
done
# nginx's stream module: the proxy under comparison, and the TLS backend
if stream_module_missing; then missing+=(libnginx-mod-stream); fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install.sh: everything is installed"
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || {
  echo "install.sh: apt-get not found; install ${missing[*]} (or your system's equivalents)" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "install.sh: not root and no sudo; run it as root" >&2
    exit 1
  fi
}

POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# blocks service starts while benches/install.sh runs apt-get\nexit 101\n' |
    as_root tee "$POLICY" >/dev/null
  as_root chmod 755 "$POLICY"
  ADDED_POLICY=1
fi
cleanup() { if [ "$ADDED_POLICY" = 1 ]; then as_root rm -f "$POLICY"; fi; }
trap cleanup EXIT

echo "install.sh: installing ${missing[*]}"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"

still=()
for pair in "${wanted[@]}"; do
  have "${pair%%:*}" || still+=("${pair%%:*}")
done
if [ ${#still[@]} -gt 0 ]; then
  echo "install.sh: still missing after apt-get: ${still[*]}" >&2
  exit 1
fi
echo "install.sh: done"
