#!/usr/bin/env bash
# Route-scale benchmark of the write path: load N stream routes through the
# Admin API, then measure PUT latency, apply latency, load rate and memory
# at each N (see benches/routes.py).
#
#   benches/routes.sh                        # release build, 1,000 / 10,000 / 100,000 routes
#   benches/routes.sh --routes 1000 10000    # extra options go to routes.py
#   benches/routes.sh --store both           # local store, then a throwaway etcd
#
# The release build is made without LTO, so a rebuild after a change is
# quick on a shared machine.
# JSON rows land in target/bench/routes.json.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_PROFILE_RELEASE_LTO=false cargo build --release --locked
mkdir -p target/bench
exec python3 benches/routes.py --bin "$PWD/target/release/apisix-stream" \
  --json target/bench/routes.json "$@"
