#!/usr/bin/env bash
# Benchmark apisix-stream side by side with nginx `stream` and HAProxy on this
# machine, using the shared harness (bench/compare.sh beside the repository).
#
#   benches/compare.sh                 # release build, then all workloads
#   benches/compare.sh --repeat 5      # extra options go to compare.sh
#
# Figures are ratios measured in the same run (the machine is shared and
# noisy); JSON results land in target/bench/compare.json.
set -euo pipefail
cd "$(dirname "$0")/.."

harness=${APISIX_STREAM_BENCH:-../shared/bench}
[ -x "$harness/compare.sh" ] || {
  echo "benches/compare.sh: cannot find $harness/compare.sh (set APISIX_STREAM_BENCH)" >&2
  exit 1
}
for tool in nginx haproxy iperf3 wrk dnsperf; do
  command -v "$tool" >/dev/null || {
    echo "benches/compare.sh: $tool is missing; run $harness/install.sh first" >&2
    exit 1
  }
done

cargo build --release --locked
mkdir -p target/bench
"$harness/compare.sh" --apisix-stream "$PWD/target/release/apisix-stream" \
  --json target/bench/compare.json "$@"
