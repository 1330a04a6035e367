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
