#!/usr/bin/env bash
# The meshsync demo: three local peers keep a folder and a record store in sync, then clean up.
#
#   scripts/demo.sh            run it (builds target/release/meshsync first)
#   KEEP=1 scripts/demo.sh     leave the peers running afterwards (stop: scripts/mesh.sh down)
#
# Everything runs on 127.0.0.1 with mDNS off, in a temporary directory.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
demo_dir=$(mktemp -d /tmp/meshsync-demo.XXXXXX)
export MESHSYNC_MESH_DIR="$demo_dir/mesh"
mesh="$root/scripts/mesh.sh"

cleanup() {
  if [ -z "${KEEP:-}" ]; then
    "$mesh" down >/dev/null 2>&1 || true
    rm -rf "$demo_dir"
  fi
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Waits until the command succeeds (10 s at most).
wait_for() {
  for _ in $(seq 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "demo: timed out waiting for: $*" >&2
  return 1
}

step "Start three peers"
"$mesh" up 3
bin="${MESHSYNC_BIN:-$root/target/release/meshsync}"
node() { "$bin" --home "$MESHSYNC_MESH_DIR/node$1" "${@:2}"; }

step "Share a folder: node0 creates it, node1 and node2 join with the token"
for i in 0 1 2; do mkdir -p "$demo_dir/folder$i"; done
token=$(node 0 share create --folder "$demo_dir/folder0" 2>/dev/null)
echo "token: ${token:0:60}…"
node 1 share join "$token" --folder "$demo_dir/folder1"
node 2 share join "$token" --folder "$demo_dir/folder2"

step "Write a file on node0; it appears on node2"
echo "hello from node0" >"$demo_dir/folder0/hello.txt"
wait_for grep -q "hello from node0" "$demo_dir/folder2/hello.txt"
echo "node2 has: $(cat "$demo_dir/folder2/hello.txt")"

step "Edit it on node2 and add a directory; node1 follows"
echo "edited on node2" >"$demo_dir/folder2/hello.txt"
mkdir -p "$demo_dir/folder2/docs" && echo "notes" >"$demo_dir/folder2/docs/notes.md"
wait_for grep -q "edited on node2" "$demo_dir/folder1/hello.txt"
wait_for test -f "$demo_dir/folder1/docs/notes.md"
echo "node1 has: $(cat "$demo_dir/folder1/hello.txt"), docs/notes.md"

step "Delete on node1; gone everywhere (kept for an hour in .meshsync/trash)"
rm "$demo_dir/folder1/docs/notes.md"
wait_for test ! -e "$demo_dir/folder0/docs/notes.md"
ls -A "$demo_dir/folder0"

step "Records: a replicated key/value store"
"$mesh" share demo >/dev/null
node 0 kv put demo greeting "hello, mesh"
wait_for node 2 kv get demo greeting
echo "node2: greeting = $(node 2 kv get demo greeting)"
node 1 kv put demo counter 42
wait_for node 0 kv get demo counter
node 0 kv list demo --json

step "Status of node0"
node 0 status

if [ -n "${KEEP:-}" ]; then
  echo; echo "Peers keep running (homes in $MESHSYNC_MESH_DIR). Stop: MESHSYNC_MESH_DIR=$MESHSYNC_MESH_DIR $mesh down"
else
  step "Stop the peers and clean up"
fi
