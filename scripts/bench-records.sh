#!/usr/bin/env bash
# Records benchmark (issue 3): reconciliation cost (pure and through real daemons), latency,
# throughput, memory and start-up. Prints one markdown report with the date and the command.
#
#   scripts/bench-records.sh            # everything, n up to 10^6 (about 10 minutes on 2 cores)
#   scripts/bench-records.sh --quick    # skip the 10^6-record parts (about 2 minutes)
#   scripts/bench-records.sh --no-build # use target/release/meshsync as it is
#   scripts/bench-records.sh --json=FILE  # also write the raw daemon results as JSON
#   scripts/bench-records.sh --only=idle,latency,throughput,fanout,reconcile  # some parts only
#   scripts/bench-records.sh --only=hold --hold=10000000  # one daemon loads and holds 10^7
#                                                         # records (~15 GB free, ~20 minutes)
#   scripts/bench-records.sh --fanout-settle=S  # idle CPU of the 32 measured S s after the puts
#   scripts/bench-records.sh --fanout-idle=S    # ... over S s (by the minute), 30 by default
#                                               # (30 by default; 1200 for the settled mesh)
#
# Every daemon runs on 127.0.0.1 with --no-mdns in a fresh home under a temporary directory,
# which is removed at the end; every daemon started is stopped, also on failure or Ctrl-C.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=0
build=1
json=""
only=""
settle=""
idle=""
hold=""
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        --json=*) json="${arg#--json=}" ;;
        --only=*) only="${arg#--only=}" ;;
        --fanout-settle=*) settle="${arg#--fanout-settle=}" ;;
        --fanout-idle=*) idle="${arg#--fanout-idle=}" ;;
        --hold=*) hold="${arg#--hold=}" ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

workdir="$(mktemp -d "${TMPDIR:-/tmp}/meshsync-bench.XXXXXX")"
helper_pid=""

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    if [[ -n "$helper_pid" ]] && kill -0 "$helper_pid" 2>/dev/null; then
        kill -TERM "$helper_pid" 2>/dev/null || true
        wait "$helper_pid" 2>/dev/null || true
    fi
    # Daemons the helper could not stop itself (it records every pid it starts).
    if [[ -f "$workdir/pids" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] || continue
            if kill -0 "$pid" 2>/dev/null; then
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done < "$workdir/pids"
    fi
    rm -rf "$workdir"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin="$target_dir/release/meshsync"
if [[ $build == 1 ]]; then
    echo "building (release)…" >&2
    nice -n 10 cargo build --release --bin meshsync --example reconcile_costs >&2
fi
[[ -x "$bin" ]] || { echo "no $bin; run without --no-build" >&2; exit 1; }

started=$(date +%s)
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
cost_args=()
[[ $quick == 1 ]] && cost_args+=(--quick)
echo "pure reconciliation cost table…" >&2
"$target_dir/release/examples/reconcile_costs" "${cost_args[@]}" --json "$workdir/pure.json" \
    > "$workdir/pure.md"

helper_args=(--binary "$bin" --workdir "$workdir" --pure-json "$workdir/pure.json" --pure-md "$workdir/pure.md")
[[ $quick == 1 ]] && helper_args+=(--quick)
[[ -n "$json" ]] && helper_args+=(--json "$json")
[[ -n "$only" ]] && helper_args+=(--only "$only")
[[ -n "$settle" ]] && helper_args+=(--fanout-settle "$settle")
[[ -n "$idle" ]] && helper_args+=(--fanout-idle "$idle")
[[ -n "$hold" ]] && helper_args+=(--hold "$hold")
python3 "$here/bench_records.py" "${helper_args[@]}" > "$workdir/daemons.md" &
helper_pid=$!
status=0
wait "$helper_pid" || status=$?
helper_pid=""

cat <<EOF
## Records benchmark

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- command: \`scripts/bench-records.sh $*\`
- commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ has uncommitted changes)')
- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load average at the start: $load_before, at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared; numbers are noisy)
- runtime: $(( $(date +%s) - started )) s

EOF
cat "$workdir/daemons.md"
if [[ $status != 0 ]]; then
    echo "**The daemon benchmarks failed (exit $status); see the log above.**"
fi
exit "$status"
