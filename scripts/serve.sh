#!/usr/bin/env bash
# Builds Updraft (installing the build tools if needed) and runs `updraft serve` on embedded
# defaults: SQLite and blobs in ./updraft-data, HTTP on 127.0.0.1:8080. Extra arguments go to
# `updraft serve` (see `updraft serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec cargo run --release --bin updraft -- serve "$@"
