#!/usr/bin/env bash
# Scale benchmark: one big folder tree between two meshsync daemons on loopback.
#
#   scripts/bench-scale.sh                        # 100,000 files x 1 KiB in 1,000 directories
#   scripts/bench-scale.sh --files=1000000        # a million (needs ~10 GB free and an hour)
#   scripts/bench-scale.sh --mix=mixed            # sizes 100 B-4 KiB, some 16-256 KiB, 0.1 % 1-4 MiB
#   scripts/bench-scale.sh --idle=60 --json=FILE --keep --no-build --dir=DIR
#   scripts/bench-scale.sh --syncthing=no         # skip the side-by-side Syncthing run
#   scripts/bench-scale.sh --syncs=5              # the initial sync five times, each to a fresh B
#
# Phases (see scripts/bench_scale.py): A indexes the tree; B joins and receives it; both idle;
# B restarts (time to API, rescan); 1 % of the files rewritten on A; a tenth of the tree deleted
# on A. For each: time, RSS now and peak (VmHWM), CPU seconds of both daemons; at the end the
# store's size per file. Then Syncthing (Debian package `syncthing`, if installed; up to 200,000
# files) indexes and syncs the same tree, side by side in the same run. Everything listens on 127.0.0.1 (no mDNS); every process started is
# stopped and the work directory removed on exit, also on failure or Ctrl-C.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

build=1
args=()
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        --files=*|--mix=*|--idle=*|--json=*|--dir=*|--seed=*|--log=*|--syncthing=*|--syncs=*) args+=("--${arg#--}") ;;
        --keep) args+=("--keep") ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

if [ "$build" = 1 ]; then
    cargo build --release --quiet
fi
exec python3 "$here/bench_scale.py" --binary "$root/target/release/meshsync" "${args[@]}"
