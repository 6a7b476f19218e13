#!/usr/bin/env bash
# The floor the file system under a folder sets for receiving many small files durably, measured
# without meshsync: a small C program (scripts/fs_floor.c, built with the system's `cc`) creates,
# writes, fsyncs and renames files of 1 KiB and fsyncs their directory, as meshsync's writer
# does, from several threads. Compare its CPU per file with bench-scale.sh's B_cpu_ms_per_file.
#
#   scripts/bench-fs-floor.sh                  # 20,000 files in 1,000 directories, under /tmp
#   scripts/bench-fs-floor.sh --dir=/mnt/disk  # on another file system
#   scripts/bench-fs-floor.sh --files=100000 --dirs=1000 --threads="16 64 256"
#
# Rows: with fsync of file and directory (what meshsync does), file only, no fsync at all, and
# batched (each thread writes 256 temp files, one syncfs, renames them, one more syncfs: as
# durable as the first row, with two flushes per 256 files), and batched with unnamed temp
# files (O_TMPFILE, given their name by linkat: no temp name created, renamed and removed in
# the directory); each with every thread count.
# The work directory is removed on exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
files=20000 dirs=1000 threads="1 16 64 256" base="${TMPDIR:-/tmp}"
for arg in "$@"; do
    case "$arg" in
        --files=*) files="${arg#*=}" ;;
        --dirs=*) dirs="${arg#*=}" ;;
        --threads=*) threads="${arg#*=}" ;;
        --dir=*) base="${arg#*=}" ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done
command -v cc >/dev/null || { echo "needs a C compiler (cc), e.g. Debian's gcc" >&2; exit 1; }

work="$(mktemp -d "$base/meshsync-fs-floor-XXXXXX")"
trap 'rm -rf "$work"' EXIT
cc -O2 -pthread -o "$work/fs_floor" "$here/fs_floor.c"

echo "file system under $base: $(df -T "$base" | awk 'NR==2 {print $2, $1}')"
echo "$files files of 1 KiB in $dirs directories"
printf '%-22s %8s %10s %12s %14s\n' "fsync" "threads" "seconds" "files/s" "CPU ms/file"
for mode in 2 1 0 3 4; do
    for t in $threads; do
        # Synced first: the previous run's writeback and deletes are not charged to this one.
        rm -rf "$work/root" && mkdir "$work/root" && sync
        if ! IFS=$'\t' read -r _ _ _ wall rate cpu < <("$work/fs_floor" "$work/root" "$files" "$t" "$dirs" "$mode"); then
            continue
        fi
        case "$mode" in
            2) what="file and directory" ;;
            1) what="file only" ;;
            0) what="none" ;;
            3) what="batched syncfs" ;;
            4) what="batched, unnamed" ;;
        esac
        printf '%-22s %8s %10s %12s %14s\n' "$what" "$t" "$wall" "$rate" "$cpu"
    done
done
