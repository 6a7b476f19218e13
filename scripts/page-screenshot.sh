#!/usr/bin/env bash
# A screenshot of the daemon's status page, for a person to look at: two local peers share a
# folder and a record store, a few files and records change, and headless chromium renders
# node0's page (opened through the link `meshsync open` prints) into a PNG.
#
#   scripts/page-screenshot.sh [OUT.png]     (default: /tmp/meshsync-page.png)
#
# Needs `chromium` (Debian package) and builds target/release/meshsync unless MESHSYNC_BIN is
# set. Everything runs on 127.0.0.1 with mDNS off, in a temporary directory, and is stopped and
# removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/meshsync-page.png}
command -v chromium >/dev/null || { echo "page-screenshot: needs chromium (apt-get install chromium)" >&2; exit 2; }
work=$(mktemp -d /tmp/meshsync-page.XXXXXX)
export MESHSYNC_MESH_DIR="$work/mesh"
mesh="$root/scripts/mesh.sh"
cleanup() {
  "$mesh" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$mesh" up 2 >/dev/null
bin="${MESHSYNC_BIN:-$root/target/release/meshsync}"
node() { "$bin" --home "$MESHSYNC_MESH_DIR/node$1" "${@:2}"; }

mkdir -p "$work/docs0" "$work/docs1"
token=$(node 0 share create --folder "$work/docs0" --name docs 2>/dev/null)
node 1 share join "$token" --folder "$work/docs1" --name docs >/dev/null
token=$(node 0 share create --records notes 2>/dev/null)
node 1 share join "$token" --records notes >/dev/null
echo "hello" >"$work/docs1/hello.txt"
mkdir -p "$work/docs0/reports" && echo "q4" >"$work/docs0/reports/q4.txt"
node 1 kv put notes greeting "hi from node1" >/dev/null
node 0 kv put notes todo "write the report" >/dev/null
for _ in $(seq 100); do
  [ -f "$work/docs0/hello.txt" ] && [ -f "$work/docs1/reports/q4.txt" ] && break
  sleep 0.1
done
sleep 2

link=$(node 0 open)
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$work/browser" --window-size=1200,1000 --virtual-time-budget=4000 \
  --screenshot="$out" "$link" >/dev/null 2>&1
echo "wrote $out"
