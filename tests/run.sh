#!/usr/bin/env bash
# Run the whole test suite. The tests start real programs on loopback (etcd
# and etcdctl, dnsmasq, tmux, redis-server, redis-cli); any that is missing is installed first with
# apt-get (through sudo when not root). Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Where the tests look for them: PATH, then the sbin directories.
find_program() {
  PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1
}

missing=()
find_program etcd || missing+=(etcd-server)
find_program etcdctl || missing+=(etcd-client)
find_program dnsmasq || missing+=(dnsmasq-base)
find_program tmux || missing+=(tmux)
find_program redis-server || missing+=(redis-server)
find_program redis-cli || missing+=(redis-tools)

if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}" >&2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: apt-get not found; install ${missing[*]} (or your system's equivalents) and run again" >&2
    exit 1
  fi
  as_root() {
    if [ "$(id -u)" -eq 0 ]; then
      "$@"
    elif command -v sudo >/dev/null 2>&1; then
      sudo "$@"
    else
      echo "tests/run.sh: not root and no sudo; install ${missing[*]} as root and run again" >&2
      exit 1
    fi
  }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

exec cargo test --locked "$@"
