# Shared by the bench scripts (sourced): where cargo put the release binaries, and a wait that
# fails loudly instead of hanging when a server dies before it is ready.
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"

# wait_for FILE PATTERN PID [SECONDS]: returns once FILE has a line matching PATTERN; exits with
# the file's content if PID dies first or SECONDS (default 60) pass.
wait_for() {
  local file=$1 pattern=$2 pid=$3 limit=$(( ${4:-60} * 20 )) tries=0
  until grep -q "$pattern" "$file" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid ended before printing '$pattern':" >&2
      cat "$file" >&2 2>/dev/null || true
      exit 1
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt "$limit" ]; then
      echo "no '$pattern' in $file after ${4:-60} s" >&2
      exit 1
    fi
    sleep 0.05
  done
}

# A throwaway PostgreSQL cluster from the system's binaries, for the scripts that measure both
# stores. `pgbin` is empty when PostgreSQL is not installed.
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"; else "$@"; fi; }

# start_pg DIR [SERVER SETTINGS]: a cluster in DIR/pg on a free loopback port (sets `port`).
start_pg() {
  local dir=$1 settings=${2:-}
  mkdir -p "$dir/pg"; if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir/pg"; fi
  as_pg "$pgbin/initdb" -U postgres --auth=trust --no-sync -E UTF8 --locale=C -D "$dir/pg/data" > /dev/null
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_pg "$pgbin/pg_ctl" -D "$dir/pg/data" -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1 $settings" -w start > /dev/null
}

# stop_pg DIR: stops the cluster start_pg started in DIR, if it runs.
stop_pg() {
  if [ -n "$pgbin" ] && [ -f "$1/pg/data/postmaster.pid" ]; then
    as_pg "$pgbin/pg_ctl" -D "$1/pg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
}

# With PROFILE=1 in the environment, a script that calls `profile_start PID` and later
# `profile_report` samples that process with perf (software clock, call graphs, as bench/profile.sh
# does) over what it runs in between, and prints the hottest symbols and the shares of user,
# kernel and each library in the samples. Without PROFILE both do nothing.
profile_start() {
  [ -n "${PROFILE:-}" ] || return 0
  command -v perf >/dev/null 2>&1 || { echo "PROFILE=1 needs perf (Debian: linux-perf)" >&2; exit 1; }
  profile_data=$(mktemp /tmp/updraft-perf-XXXXXX)
  perf record -F 499 -g -o "$profile_data" -p "$1" > /dev/null 2> "$profile_data.err" &
  profile_pid=$!
  sleep 0.5
}
profile_report() { # [TITLE]
  [ -n "${PROFILE:-}" ] || return 0
  kill -INT "$profile_pid" 2>/dev/null || true
  wait "$profile_pid" 2>/dev/null || true
  {
    echo "profile: ${1:-server}"
    echo "by library (share of samples):"
    { perf report -i "$profile_data" --no-children --sort dso --stdio 2>/dev/null || true; } \
      | grep -E '^ +[0-9]' | sed 's/ *$//' | head -8 || true
    echo "hottest symbols:"
    { perf report -i "$profile_data" --no-children --sort dso,symbol --stdio 2>/dev/null || true; } \
      | grep -E '^ +[0-9]' | sed 's/ *-  *- *$//; s/ *$//' | head -30 || true
  } >&2
  rm -f "$profile_data" "$profile_data.err"
}
