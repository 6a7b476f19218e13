#!/usr/bin/env bash
# Folder benchmark: meshsync, Syncthing and rsync on the same generated workloads, one table.
#
#   scripts/bench-folders.sh                  # all three tools, full size (about 5 minutes)
#   scripts/bench-folders.sh --quick          # W1 = 1,000 files, W2 = 64 MiB (about 2 minutes)
#   scripts/bench-folders.sh --only=meshsync  # skip the others (comma-separated list)
#   scripts/bench-folders.sh --no-build       # use target/release/meshsync as it is
#   scripts/bench-folders.sh --log=meshsync=debug --keep   # debug logs, keep the work directory
#   scripts/bench-folders.sh --json=FILE      # also write the raw results as JSON
#   scripts/bench-folders.sh --fs=here        # run in $TMPDIR's file system instead of a fresh one
#
# By default (as root, with mkfs.ext4) every tool runs on a fresh, journaled ext4 file system in
# a loop-mounted 8 GiB sparse image: a shared machine's file system carries other runs'
# leftovers (ext4 without a journal, as here, slows inode allocation for minutes after many
# deletes), which made results depend on what ran before.
#
# W1 initial sync of 10,000 files x 4 KiB in 100 directories; W2 one 256 MiB file; W3 1 MiB
# overwritten in its middle (time, bytes); W5 1 byte inserted at its start (bytes); W4 a small
# file A -> B with watchers only (median of 5); peak RSS of the daemons.
# Needs python3, ss (iproute2), and for the comparison the Debian packages syncthing and rsync.
# Everything listens on 127.0.0.1 only: meshsync with --no-mdns, Syncthing with global and
# local discovery, relays, NAT traversal, usage/crash reporting and upgrades off, rsync --daemon
# bound to 127.0.0.1. Every process started is stopped and the temporary directory removed on
# exit, also on failure or Ctrl-C.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=0
build=1
keep=0
json=""
only=""
fs_mode="loop"
rust_log="meshsync=info,warn"
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        --keep) keep=1 ;;
        --json=*) json="${arg#--json=}" ;;
        --only=*) only="${arg#--only=}" ;;
        --log=*) rust_log="${arg#--log=}" ;;
        --fs=here|--fs=loop) fs_mode="${arg#--fs=}" ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

tools="${only:-meshsync,syncthing,rsync}"
for t in ${tools//,/ }; do
    case "$t" in
        meshsync) ;;
        syncthing|rsync)
            command -v "$t" >/dev/null || {
                echo "$t is not installed (apt-get install -y syncthing rsync), or use --only=meshsync" >&2
                exit 1
            } ;;
        *) echo "unknown tool in --only: $t" >&2; exit 2 ;;
    esac
done
command -v ss >/dev/null || { echo "ss (iproute2) is needed to count bytes on the wire" >&2; exit 1; }

workdir="$(mktemp -d "${TMPDIR:-/tmp}/meshsync-bench-folders.XXXXXX")"
helper_pid=""
benchdir="$workdir"
image=""

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    if [[ -n "$helper_pid" ]] && kill -0 "$helper_pid" 2>/dev/null; then
        kill -TERM "$helper_pid" 2>/dev/null || true
        wait "$helper_pid" 2>/dev/null || true
    fi
    # Processes the helper could not stop itself (it records every pid it starts; each runs in
    # a process group of its own, which is killed with it).
    if [[ -f "$benchdir/pids" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] || continue
            if kill -0 "$pid" 2>/dev/null; then
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            fi
        done < "$benchdir/pids"
    fi
    if [[ $keep == 1 ]]; then
        rm -rf "$benchdir/src" "$benchdir"/*/A "$benchdir"/*/B "$benchdir"/*/stage
        if [[ -n "$image" ]]; then
            mkdir -p "$workdir/kept"
            cp -r "$benchdir"/. "$workdir/kept/" 2>/dev/null || true
        fi
        echo "kept homes and logs in $workdir" >&2
    fi
    if [[ -n "$image" ]]; then
        umount "$benchdir" 2>/dev/null || umount -l "$benchdir" 2>/dev/null || true
        rm -f "$image"
    fi
    [[ $keep == 1 ]] || rm -rf "$workdir"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin="$target_dir/release/meshsync"
if [[ $build == 1 ]]; then
    echo "building (release)…" >&2
    nice -n 10 cargo build --release --bin meshsync >&2
fi
[[ -x "$bin" ]] || { echo "no $bin; run without --no-build" >&2; exit 1; }

if [[ $fs_mode == loop ]]; then
    if [[ $(id -u) == 0 ]] && command -v mkfs.ext4 >/dev/null; then
        image="$workdir.img"
        truncate -s 8G "$image"
        mkfs.ext4 -q -F "$image"
        mkdir "$workdir/fs"
        if mount -o loop "$image" "$workdir/fs"; then
            benchdir="$workdir/fs"
        else
            echo "cannot loop-mount a file system here; benchmarking in $workdir" >&2
            rm -f "$image"
            image=""
        fi
    else
        echo "not root or no mkfs.ext4: benchmarking in $workdir (see --fs)" >&2
    fi
fi

started=$(date +%s)
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
helper_args=(--binary "$bin" --workdir "$benchdir" --only "$tools" --log "$rust_log")
[[ $quick == 1 ]] && helper_args+=(--quick)
[[ -n "$json" ]] && helper_args+=(--json "$json")
python3 "$here/bench_folders.py" "${helper_args[@]}" > "$workdir/report.md" &
helper_pid=$!
status=0
wait "$helper_pid" || status=$?
helper_pid=""

# (`|| true`: a version command killed by SIGPIPE must not end the script under pipefail.)
versions="meshsync $("$bin" --version 2>/dev/null | awk '{print $NF}' || true)"
versions+=" (binary built $(date -u -r "$bin" '+%H:%M:%S UTC'); HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ', src/ has uncommitted changes'))"
if command -v syncthing >/dev/null; then
    versions+=", $(syncthing --version 2>/dev/null | awk 'NR == 1 {print $1, $2}' || true)"
fi
if command -v rsync >/dev/null; then
    versions+=", $(rsync --version 2>/dev/null | awk 'NR == 1 {print $1, $3}' || true)"
fi

cat <<EOF2
## Folder benchmark

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- command: \`scripts/bench-folders.sh $*\`
- versions: $versions
- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(df -T "$benchdir" | awk 'NR==2 {print $2}') $([[ -n "$image" ]] && echo "(fresh, loop-mounted image)" || echo "at $(df "$benchdir" | awk 'NR==2 {print $6}')"); load average at the start: $load_before, at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared; numbers are noisy)
- runtime: $(( $(date +%s) - started )) s

EOF2
cat "$workdir/report.md"
if [[ $status != 0 ]]; then
    echo
    echo "**The benchmark failed (exit $status); see the log above.**"
fi
exit "$status"
