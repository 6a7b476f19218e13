#!/usr/bin/env bash
# Degraded-network benchmark (issue 13): runs the black-box fault tests of tests/degraded.rs
# (a LAN of network namespaces: partition 2|3, 4 MiB over 320 and 1,600 kbit/s tbf links, 30 %
# loss) and tests/liveness.rs and tests/clocks.rs, with the release profile, and holds what they
# measured to the issue's goals. Prints a markdown table with the date and the command.
#
#   scripts/bench-degraded.sh            # everything (about 7 minutes: the loss run is most)
#   scripts/bench-degraded.sh --quick    # without the 30 % loss run (about 2.5 minutes)
#
# Needs root (network namespaces), ip, tc, nft and faketime. The tests create and delete every
# namespace and stop every daemon they start. Exit status 1 when a goal is missed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
export MESHSYNC_REQUIRE_NETNS=1
filter=()
if [ "$quick" = 1 ]; then
    filter=(--skip loss)
fi
echo "running the fault tests (release build)..." >&2
cargo test --release --test degraded --test liveness --test clocks -- --nocapture \
    "${filter[@]}" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }

python3 - "$out" "$quick" <<'EOF'
import re, sys, datetime
text = open(sys.argv[1]).read()
quick = sys.argv[2] == "1"

def secs(s):
    """A Rust Duration's Debug form (1.5s, 250ms, 3.2µs) in seconds."""
    m = re.match(r"([\d.]+)(ms|µs|s)", s)
    value, unit = float(m.group(1)), m.group(2)
    return value / {"s": 1, "ms": 1e3, "µs": 1e6}[unit]

rows, missed = [], 0
def row(what, measured, goal, ok):
    global missed
    missed += 0 if ok else 1
    rows.append(f"| {what} | {measured} | {goal} | {'yes' if ok else '**no**'} |")

m = re.search(r"partition 2\|3: records on the healthy side after (\S+), files after (\S+); converged (\S+) after healing", text)
records, files, healed = (secs(x) for x in m.groups())
row("partition 2 \\| 3: a record reaches the other 3-side peers", f"{records:.2f} s", "≤ 5 s", records <= 5)
row("partition 2 \\| 3: 2 MiB + a small file reach the other 3-side peers", f"{files:.2f} s", "≤ 5 s", files <= 5)
row("partition healed: everything converges", f"{healed:.2f} s", "≤ 15 s", healed <= 15)
for kbit, goal in ((320, 1.3), (1600, 1.2)):
    m = re.search(rf"4 MiB over {kbit} kbit/s: (\S+) \(ideal (\S+), ([\d.]+)x\)", text)
    took, ideal, ratio = secs(m.group(1)), secs(m.group(2)), float(m.group(3))
    row(f"4 MiB over {kbit} kbit/s (tbf)", f"{took:.1f} s ({ratio:.2f}× ideal {ideal:.1f} s)", f"≤ {goal}× ideal", ratio <= goal)
if not quick:
    m = re.search(r"30 % loss: 500 small files after (\S+), all with (\d+) MiB after (\S+)", text)
    small, mib, total = secs(m.group(1)), m.group(2), secs(m.group(3))
    row("30 % loss each way: 500 small files", f"{small:.0f} s", "completes", True)
    row(f"30 % loss each way: and a {mib} MiB file", f"{total:.0f} s", "completes", True)
m = re.search(r"while C was frozen: B had A's files after (\S+); A showed C gone after (\S+)", text)
synced, gone = secs(m.group(1)), secs(m.group(2))
row("one of 3 frozen (SIGSTOP): the others sync 20 files", f"{synced:.1f} s", "no slowdown", synced <= 5)
row("one of 3 frozen: shown `connected: false`", f"{gone:.1f} s", "a few seconds", gone <= 15)
m = re.search(r"B's offset as A sees it: first (-?[\d.]+) ms, later (-?[\d.]+) ms", text)
row("a clock drifting 1 s/s: offset measured again", f"{float(m.group(1))/1000:.1f} s → {float(m.group(2))/1000:.1f} s", "follows the clock", float(m.group(2)) > 10000)

print(f"Degraded networks, {datetime.date.today()}, `scripts/bench-degraded.sh{' --quick' if quick else ''}`:\n")
print("| what | measured | goal | met |")
print("|---|---|---|---|")
print("\n".join(rows))
sys.exit(1 if missed else 0)
EOF
