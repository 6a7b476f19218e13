#!/usr/bin/env bash
# Runs the lab's scenarios again and again with new seeds; every seed that breaks an invariant
# is kept as a regression scenario (the scenario file with that seed) in config/lab/regressions/,
# with its JSON report beside it.
#
#   scripts/chaos.sh [--rounds N] [--no-build] [SCENARIO.toml ...]
#
# Default: 10 rounds of every scenario in config/lab/ (release build). Exit code 1 if any round
# failed.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=10
build=1
scenarios=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) scenarios+=("$1"); shift ;;
  esac
done
if [[ ${#scenarios[@]} -eq 0 ]]; then
  scenarios=(config/lab/*.toml)
fi
[[ $build == 1 ]] && cargo build --release --quiet
bin=target/release/meshsync
mkdir -p config/lab/regressions
failed=0
for round in $(seq 1 "$rounds"); do
  for scenario in "${scenarios[@]}"; do
    seed=$(( (RANDOM << 15 | RANDOM) ))
    name=$(basename "$scenario" .toml)
    report=$(mktemp)
    echo "== round $round: $name, seed $seed"
    set +e
    "$bin" lab run "$scenario" --seed "$seed" --json "$report"
    code=$?
    set -e
    if [[ $code == 1 ]]; then
      failed=1
      keep="config/lab/regressions/$name-seed-$seed.toml"
      sed -E "s/^seed = .*/seed = $seed/" "$scenario" > "$keep"
      cp "$report" "${keep%.toml}.report.json"
      echo "!! kept as $keep"
    elif [[ $code != 0 ]]; then
      echo "!! the lab could not run $scenario (exit code $code)"; rm -f "$report"; exit "$code"
    fi
    rm -f "$report"
  done
done
exit $failed
