#!/usr/bin/env bash
# Start or stop a local mesh of meshsync daemons on loopback, for demos and scripted tests.
#
#   scripts/mesh.sh up N     start N daemons (127.0.0.1, ports chosen by the OS, mDNS off); node i
#                            has nodes 0..i-1 as static peers. Prints each node's home and peer id.
#   scripts/mesh.sh share NAME   create records share NAME on node0 and join it on every node
#   scripts/mesh.sh status   show every node's peers
#   scripts/mesh.sh down     stop them all (SIGTERM, then SIGKILL after 10 s)
#
# Homes live under $MESHSYNC_MESH_DIR (default /tmp/meshsync-mesh). The binary is $MESHSYNC_BIN,
# else target/release/meshsync, built (or brought up to date) with cargo first.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mesh_dir=${MESHSYNC_MESH_DIR:-/tmp/meshsync-mesh}

die() { echo "mesh.sh: $*" >&2; exit 1; }

find_bin() {
  if [ -n "${MESHSYNC_BIN:-}" ]; then echo "$MESHSYNC_BIN"; return; fi
  # Always build: a no-op when up to date, and a stale binary would demo old behaviour.
  (cd "$root" && cargo build --release --quiet) || die "build failed"
  echo "$root/target/release/meshsync"
}

# First listen address of a running node, from its JSON status.
listen_addr() {
  "$bin" --home "$1" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["listen_addrs"][0])'
}

running_pids() {
  for pidfile in "$mesh_dir"/node*/daemon.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null && echo "$pid"
  done
  return 0
}

up() {
  local n=$1
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || die "usage: mesh.sh up N (N ≥ 1)"
  [ -z "$(running_pids)" ] || die "a mesh is already running in $mesh_dir; run 'mesh.sh down' first"
  rm -rf "$mesh_dir"
  mkdir -p "$mesh_dir"
  local peers=()
  for ((i = 0; i < n; i++)); do
    local home="$mesh_dir/node$i"
    local args=(--home "$home" init --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --no-mdns)
    for p in "${peers[@]+"${peers[@]}"}"; do args+=(--peer "$p"); done
    local id
    id=$("$bin" "${args[@]}" 2>/dev/null)
    RUST_LOG=${RUST_LOG:-meshsync=info,warn} nohup "$bin" --home "$home" run \
      >"$home/daemon.log" 2>&1 </dev/null &
    echo $! >"$home/daemon.pid"
    local tries=0
    until "$bin" --home "$home" status >/dev/null 2>&1; do
      tries=$((tries + 1))
      if [ "$tries" -gt 200 ] || ! kill -0 "$(cat "$home/daemon.pid")" 2>/dev/null; then
        cat "$home/daemon.log" >&2
        die "node$i did not start"
      fi
      sleep 0.05
    done
    peers+=("$(listen_addr "$home")")
    printf 'node%-3s %s  %s\n' "$i" "$home" "$id"
  done
  echo
  echo "Try:  $bin --home $mesh_dir/node0 status"
  echo "Stop: $0 down"
}

share() {
  local name=$1
  [ -n "$name" ] || die "usage: mesh.sh share NAME"
  [ -n "$(running_pids)" ] || die "no mesh running; run 'mesh.sh up N' first"
  local token
  token=$("$bin" --home "$mesh_dir/node0" share create --records "$name" 2>/dev/null) ||
    die "cannot create share $name on node0"
  for home in "$mesh_dir"/node*; do
    [ "$home" = "$mesh_dir/node0" ] && continue
    "$bin" --home "$home" share join "$token" --records "$name" >/dev/null ||
      die "cannot join share $name on $(basename "$home")"
  done
  echo "records share '$name' created on node0 and joined on every node"
  echo "Try:  $bin --home $mesh_dir/node0 kv put $name hello world"
  echo "      $bin --home $mesh_dir/node2 kv get $name hello"
}

status() {
  for home in "$mesh_dir"/node*; do
    [ -d "$home" ] || continue
    echo "== $(basename "$home") ($home)"
    "$bin" --home "$home" peers || true
  done
}

down() {
  local pids
  pids=$(running_pids)
  [ -n "$pids" ] || { echo "no mesh running in $mesh_dir"; return 0; }
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 100); do
    [ -z "$(running_pids)" ] && break
    sleep 0.1
  done
  pids=$(running_pids)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  rm -f "$mesh_dir"/node*/daemon.pid
  echo "stopped; homes and logs stay in $mesh_dir"
}

bin=$(find_bin)
case "${1:-}" in
  up) up "${2:-3}" ;;
  share) share "${2:-}" ;;
  status) status ;;
  down) down ;;
  *) die "usage: mesh.sh up N | share NAME | status | down" ;;
esac
