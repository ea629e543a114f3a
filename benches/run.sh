#!/usr/bin/env bash
# One entry point for apisix-stream's benchmarks: the plain TCP/UDP suite
# next to `direct`, nginx `stream`, HAProxy `mode tcp` and dnsdist, and the
# tls, redis, routes and held suites (--suite). Install the tools once with
# benches/install.sh; everything else is in benches/bench/ (python3, standard
# library only).
#
#   benches/run.sh                      # release build, l4 suite, 3 rounds
#   benches/run.sh --suite all          # every suite
#   benches/run.sh --suite tls --key rsa  # TLS with RSA-2048 certificates only
#   benches/run.sh --smoke              # one quick round with the debug build
#   benches/run.sh --help
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v python3 >/dev/null 2>&1 || {
  echo "benches/run.sh: python3 is missing (run benches/install.sh)" >&2
  exit 1
}
exec env PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" python3 -m bench "$@"
