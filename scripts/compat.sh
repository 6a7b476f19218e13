#!/usr/bin/env bash
# Compatibility check between an older meshsync and the current checkout, on loopback.
#
#   scripts/compat.sh              old = 86656d5 (the last commit before the one-database layout)
#   scripts/compat.sh REV          old = any revision git knows
#   KEEP=1 scripts/compat.sh       keep the run directory (homes, folders, logs) even on success
#
# 1. Builds the old binary in a git worktree of REV under $MESHSYNC_COMPAT_DIR (default
#    /tmp/meshsync-compat; worktree and target directory are kept and reused by later runs) and
#    the new one from this checkout (`cargo build --release`), one after the other, under nice.
#    MESHSYNC_OLD_BIN / MESHSYNC_NEW_BIN skip the respective build and use that binary.
# 2. Mixed mesh: one old and one new daemon. A folder share created on the old one (joined by the
#    new one) and a records share created on the new one (joined by the old one); records put,
#    overwritten and deleted on each side, files created, edited (two 9 MiB files, so chunk-list
#    pages are used, patched in their middle), deleted and renamed on each side. Every step must
#    arrive: both folders and a reference copy the script keeps must hash the same, and both
#    daemons must report the same share roots.
# 3. Upgrade in place: two old daemons sync a folder (with 9 MiB files from both sides) and
#    records; one is stopped with SIGTERM and started again with the new binary on the same home.
#    Checked: its state/folder-*.redb is migrated and removed; the share roots, entry counts and
#    synced-path counts are what they were and the peer served and fetched nothing (no file
#    re-sent as a new version), no conflict copies; edits afterwards (a 9 MiB file patched on the
#    old peer among them) sync both ways; a SIGTERM and restart of the new daemon are clean.
# 4. Prints PASS/FAIL per check with its evidence; exits 1 if any check failed (2 if the run
#    itself broke off). On failure the run directory is kept and its path printed.
#
# Every daemon listens on 127.0.0.1 with port 0 and mDNS off, in homes under a temporary
# directory; every process started is stopped (SIGTERM, then SIGKILL) on exit, also on failure
# or Ctrl-C. Every wait polls its condition with a timeout ($COMPAT_TIMEOUT seconds, default 60).
# Needs git, cargo, python3.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
compat_dir=${MESHSYNC_COMPAT_DIR:-/tmp/meshsync-compat}
rev=${1:-86656d5}
timeout=${COMPAT_TIMEOUT:-60}
big_mib=9 # ≥ 8 MiB: long enough for its chunk list to be cut into pages

t_start=$SECONDS
run_dir=""
results=()
failures=0
finished=0
declare -A BIN=() HOMEDIR=() PID=() DIR=()

say() { printf '%s\n' "$*"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "compat.sh: $*" >&2; exit 2; }

pass() {
  results+=("PASS  $1: $2")
  printf '  \033[32mPASS\033[0m %s: %s\n' "$1" "$2"
}
fail() {
  results+=("FAIL  $1: $2")
  failures=$((failures + 1))
  printf '  \033[31mFAIL\033[0m %s: %s\n' "$1" "$2"
}

# ---------------------------------------------------------------------------------------------
# Processes and cleanup

stop_all() {
  local name pids=()
  for name in "${!PID[@]}"; do
    kill -0 "${PID[$name]}" 2>/dev/null && pids+=("${PID[$name]}")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 100); do
    local alive=0 p
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

on_exit() {
  local rc=$?
  [ -z "${interrupted:-}" ] || rc=130
  set +e # clean up as far as possible, whatever fails
  trap - EXIT INT TERM
  # A signal may land while a wait has its condition's output sent to /dev/null.
  exec 1>&3 2>&4
  stop_all
  if [ ${#results[@]} -gt 0 ] || [ "$finished" = 0 ]; then
    printf '\n\033[1m== Summary (%s s)\033[0m\n' "$((SECONDS - t_start))"
    local r
    for r in "${results[@]+"${results[@]}"}"; do say "$r"; done
    [ "$finished" = 1 ] || say "ABORTED: the run broke off before every check ran (exit $rc${interrupted:+, interrupted})"
  fi
  if [ -n "$run_dir" ] && [ -d "$run_dir" ]; then
    if [ -n "${KEEP:-}" ] || [ "$failures" -gt 0 ] || [ "$finished" = 0 ]; then
      say "run directory kept: $run_dir (daemon logs: $run_dir/*/daemon.log)"
    else
      rm -rf "$run_dir"
    fi
  fi
  if [ "$finished" = 0 ]; then exit $((rc == 0 ? 2 : rc)); fi
  [ "$failures" -eq 0 ] || exit 1
  exit 0
}
exec 3>&1 4>&2
trap on_exit EXIT
trap 'interrupted=1; exit 130' INT TERM

# Waits until the command succeeds, polling every 0.2 s; false after SECS seconds.
wait_until() {
  local secs=$1 what=$2
  shift 2
  local end=$((SECONDS + secs))
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [ "$SECONDS" -ge "$end" ]; then
      say "  (timed out after ${secs} s waiting for: $what)"
      return 1
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# Builds

build_old() {
  if [ -n "${MESHSYNC_OLD_BIN:-}" ]; then
    old_bin=$MESHSYNC_OLD_BIN
    old_rev="$rev ($old_bin)"
    return
  fi
  git -C "$root" rev-parse --verify --quiet "$rev^{commit}" >/dev/null || die "unknown revision $rev"
  local full
  full=$(git -C "$root" rev-parse "$rev^{commit}")
  old_rev=${full:0:12}
  local src="$compat_dir/src-$old_rev"
  mkdir -p "$compat_dir"
  if [ ! -e "$src/.git" ]; then
    # --force: a worktree registered at this path whose directory was since deleted is re-added.
    git -C "$root" worktree add --force --detach "$src" "$full" >/dev/null 2>&1 ||
      die "cannot create a worktree of $rev at $src"
  fi
  [ "$(git -C "$src" rev-parse HEAD)" = "$full" ] || git -C "$src" checkout --quiet --detach "$full"
  say "old: $rev = $old_rev, building in $src (target $compat_dir/target-old)"
  local t=$SECONDS
  (cd "$src" && CARGO_TARGET_DIR="$compat_dir/target-old" nice -n 10 cargo build --release --locked --quiet) ||
    die "the old build failed"
  old_bin="$compat_dir/target-old/release/meshsync"
  say "old: built in $((SECONDS - t)) s: $old_bin"
}

build_new() {
  if [ -n "${MESHSYNC_NEW_BIN:-}" ]; then
    new_bin=$MESHSYNC_NEW_BIN
    new_rev="($new_bin)"
    return
  fi
  new_rev=$(git -C "$root" rev-parse --short=12 HEAD)
  git -C "$root" diff --quiet HEAD -- src Cargo.toml Cargo.lock || new_rev="$new_rev+dirty"
  say "new: $new_rev, building in $root"
  local t=$SECONDS
  (cd "$root" && nice -n 10 cargo build --release --quiet) || die "the new build failed"
  new_bin="$root/target/release/meshsync"
  say "new: built in $((SECONDS - t)) s: $new_bin"
}

# ---------------------------------------------------------------------------------------------
# Nodes: NAME → binary, home, pid, shared folder

# cli NAME ARGS…: the node's own binary as client of its daemon.
cli() { "${BIN[$1]}" --home "${HOMEDIR[$1]}" "${@:2}"; }

# init_node NAME BIN [PEER_ADDR]: a fresh home listening on 127.0.0.1, port 0, mDNS off.
init_node() {
  local name=$1 bin=$2 peer=${3:-}
  BIN[$name]=$bin
  HOMEDIR[$name]="$run_dir/$name"
  DIR[$name]="$run_dir/$name-folder"
  local args=(init --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --no-mdns)
  [ -z "$peer" ] || args+=(--peer "$peer")
  cli "$name" "${args[@]}" >/dev/null 2>&1 || die "init of $name failed"
}

# start_node NAME: runs its daemon (log appended to HOME/daemon.log) and waits for its API.
start_node() {
  local name=$1
  local log="${HOMEDIR[$name]}/daemon.log"
  echo "---- start $(date -u +%FT%TZ) ${BIN[$name]}" >>"$log"
  NO_COLOR=1 RUST_LOG=${RUST_LOG:-meshsync=info,warn} "${BIN[$name]}" --home "${HOMEDIR[$name]}" run \
    >>"$log" 2>&1 </dev/null &
  PID[$name]=$!
  if ! wait_until "$timeout" "$name's API" cli "$name" status; then
    tail -n 30 "$log" >&2
    die "$name did not start"
  fi
}

# stop_node NAME: SIGTERM, then waits; sets stop_rc (the daemon's exit status, or "timeout"
# after which it was killed) and stop_secs.
stop_node() {
  local name=$1 pid=${PID[$1]} t=$SECONDS
  kill -TERM "$pid" 2>/dev/null || true
  if wait_until "$timeout" "$name to exit" exited "$pid"; then
    stop_rc=0
    wait "$pid" 2>/dev/null || stop_rc=$?
  else
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    stop_rc=timeout
  fi
  stop_secs=$((SECONDS - t))
  unset "PID[$name]"
}

exited() { ! kill -0 "$1" 2>/dev/null; }

# q NAME PYTHON-EXPR: evaluates the expression over the node's `status --json` (as `s`, with
# share(n), folder(n), peers() and sessions_with(peer_id, share_name, since_ms)).
q() {
  cli "$1" status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
def share(n): return next(x for x in s["shares"] if x["name"] == n)
def folder(n): return share(n)["folder"]
def peers(): return [p["peer_id"] for p in s["peers"]]
def sessions_with(peer, n, since):
    sid = share(n)["id"]
    return [x for x in s.get("sessions", []) if x["peer"] == peer and x["share"] in (sid, n)
            and x.get("started_ms", 0) >= since and x["complete"]]
v = eval(sys.argv[1])
print(json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else v)' "$2"
}
# true_q NAME EXPR: succeeds when the expression is true (for wait_until).
true_q() { [ "$(q "$1" "$2")" = true ]; }

peer_id() { q "$1" 's["peer_id"]'; }
listen_addr() { q "$1" 's["listen_addrs"][0]'; }
now_ms() { python3 -c 'import time; print(int(time.time() * 1000))'; }

# ---------------------------------------------------------------------------------------------
# Folders: every change is made on a node's folder and on a reference copy, which the folders
# are then compared with (paths, kinds, permission bits, content hashes; .meshsync/ left out).

tree_list() {
  python3 - "$1" <<'EOF'
import hashlib, os, stat, sys
root = sys.argv[1]
out = []
for d, dirs, files in os.walk(root):
    rel = os.path.relpath(d, root)
    if rel == ".":
        dirs[:] = [x for x in dirs if x != ".meshsync"]
    for n in sorted(dirs + files):
        p = os.path.join(d, n)
        r = os.path.normpath(os.path.join(rel, n))
        st = os.lstat(p)
        mode = oct(stat.S_IMODE(st.st_mode))
        if stat.S_ISLNK(st.st_mode):
            out.append(f"l {r} -> {os.readlink(p)}")
        elif stat.S_ISDIR(st.st_mode):
            out.append(f"d {r} {mode}")
        else:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out.append(f"f {r} {mode} {st.st_size} {h.hexdigest()[:16]}")
print("\n".join(sorted(out)))
EOF
}
tree_digest() { tree_list "$1" | sha256sum | cut -c1-16; }
# same_trees DIR…: all the trees hash the same.
same_trees() {
  local first d
  first=$(tree_digest "$1")
  for d in "${@:2}"; do [ "$(tree_digest "$d")" = "$first" ] || return 1; done
}
conflict_copies() { find "$@" -name '*.sync-conflict-*' -not -path '*/.meshsync/*' | wc -l; }
tree_files() { tree_list "$1" | grep -c '^f ' || true; }

# Applies one change to a node's folder and to the reference copy REF.
f_write() { # NODE REL [TEXT]: TEXT and a newline; no TEXT: an empty file
  mkdir -p "$(dirname "${DIR[$1]}/$2")" "$(dirname "$REF/$2")"
  if [ $# -ge 3 ]; then
    printf '%s\n' "$3" >"${DIR[$1]}/$2"
    printf '%s\n' "$3" >"$REF/$2"
  else
    : >"${DIR[$1]}/$2"
    : >"$REF/$2"
  fi
}
f_big() { # NODE REL: a new random file of $big_mib MiB
  local src="$run_dir/src-$(basename "$2")"
  head -c $((big_mib << 20)) /dev/urandom >"$src"
  mkdir -p "$(dirname "${DIR[$1]}/$2")" "$(dirname "$REF/$2")"
  cp "$src" "$REF/$2"
  cp "$src" "${DIR[$1]}/$2"
}
f_patch() { # NODE REL: 64 KiB of new random bytes in the middle, in place
  local patch="$run_dir/patch.bin"
  head -c 65536 /dev/urandom >"$patch"
  dd if="$patch" of="$REF/$2" bs=65536 seek=$(((big_mib << 4) / 2)) conv=notrunc status=none
  dd if="$patch" of="${DIR[$1]}/$2" bs=65536 seek=$(((big_mib << 4) / 2)) conv=notrunc status=none
}
f_rm() { rm -rf "${DIR[$1]:?}/$2" "${REF:?}/$2"; }
f_mv() { # NODE FROM TO
  mkdir -p "$(dirname "${DIR[$1]}/$3")" "$(dirname "$REF/$3")"
  mv "${DIR[$1]}/$2" "${DIR[$1]}/$3"
  mv "$REF/$2" "$REF/$3"
}
f_chmod() { chmod "$3" "${DIR[$1]}/$2" "$REF/$2"; }

# converge CHECK WHAT NODE… : waits until the nodes' folders equal the reference copy; records
# the check with the evidence (or the difference).
converge() {
  local check=$1 what=$2 t=$SECONDS
  shift 2
  local dirs=() n
  for n in "$@"; do dirs+=("${DIR[$n]}"); done
  if wait_until "$timeout" "$what" same_trees "$REF" "${dirs[@]}"; then
    pass "$check" "$what: $* identical to the reference ($(tree_files "$REF") files, tree $(tree_digest "$REF")) after $((SECONDS - t)) s"
  else
    fail "$check" "$what: not identical after ${timeout} s"
    for n in "$@"; do
      say "    diff reference vs $n:"
      diff <(tree_list "$REF") <(tree_list "${DIR[$n]}") | sed 's/^/      /' | head -20 || true
    done
  fi
}

# same_roots NAME1 NAME2 SHARE: both daemons report the same share root.
same_roots() {
  local a b
  a=$(q "$1" "share('$3')['root']") && b=$(q "$2" "share('$3')['root']") && [ -n "$a" ] && [ "$a" = "$b" ]
}
check_roots() { # CHECK NODE1 NODE2 SHARE…
  local check=$1 a=$2 b=$3 s ok=1 ev=""
  shift 3
  for s in "$@"; do
    if wait_until "$timeout" "equal roots of $s" same_roots "$a" "$b" "$s"; then
      ev+="$s root $(q "$a" "share('$s')['root'][:16]") ($(q "$a" "share('$s')['entries']") entries); "
    else
      ok=0
      ev+="$s: $a root $(q "$a" "share('$s')['root'][:16]"), $b root $(q "$b" "share('$s')['root'][:16]"); "
    fi
  done
  if [ "$ok" = 1 ]; then pass "$check" "$a and $b agree: ${ev%; }"; else fail "$check" "${ev%; }"; fi
}

kv_is() { [ "$(cli "$1" kv get "$2" "$3" 2>/dev/null)" = "$4" ]; }
# kv_absent NAME SHARE KEY: the daemon answers and the key is not in the share.
kv_absent() {
  local keys
  keys=$(cli "$1" kv list "$2") && ! grep -qxF -- "$3" <<<"$keys"
}
kv_hash_is() { [ "$(cli "$1" kv get "$2" "$3" 2>/dev/null | sha256sum | cut -c1-16)" = "$4" ]; }

# check_wait CHECK WHAT COMMAND…: waits for the condition and records it.
check_wait() {
  local check=$1 what=$2 t=$SECONDS
  shift 2
  if wait_until "$timeout" "$what" "$@"; then
    pass "$check" "$what (after $((SECONDS - t)) s)"
  else
    fail "$check" "$what: not within ${timeout} s"
  fi
}

# connected NAME1 NAME2 SHARE…: each lists the other among its peers and the shares' members.
connected() {
  local a=$1 b=$2 ida idb s
  ida=$(peer_id "$a") && idb=$(peer_id "$b") || return 1
  true_q "$a" "'$idb' in peers()" && true_q "$b" "'$ida' in peers()" || return 1
  for s in "${@:3}"; do
    true_q "$a" "'$idb' in share('$s')['members']" || return 1
    true_q "$b" "'$ida' in share('$s')['members']" || return 1
  done
}

# idle NAME SHARE: the folder has scanned at least once and has nothing left to fetch.
idle() { true_q "$1" "folder('$2')['state'] == 'idle' and folder('$2')['scans'] >= 1 and folder('$2')['needed_files'] == 0"; }

# ---------------------------------------------------------------------------------------------
# 2. Mixed mesh

mixed_mesh() {
  step "Mixed mesh: old ($old_rev) and new ($new_rev) daemon"
  local t0=$SECONDS
  REF="$run_dir/mixed-ref"
  mkdir -p "$REF"
  init_node old "$old_bin"
  start_node old
  init_node new "$new_bin" "$(listen_addr old)"
  start_node new
  # The folder's name is the share's name on both sides.
  DIR[old]="$run_dir/old-folder/docs" DIR[new]="$run_dir/new-folder/docs"
  local token
  token=$(cli old share create --folder "${DIR[old]}" 2>/dev/null) || die "old: share create --folder failed"
  cli new share join "$token" --folder "${DIR[new]}" >/dev/null || {
    fail mixed.join "the new daemon cannot join a folder token made by the old one"
    return
  }
  token=$(cli new share create --records notes 2>/dev/null) || die "new: share create --records failed"
  cli old share join "$token" --records notes >/dev/null || {
    fail mixed.join "the old daemon cannot join a records token made by the new one"
    return
  }
  check_wait mixed.connect "old and new connected, each a member of both shares at the other" \
    connected old new docs notes

  say "-- records"
  cli old kv put notes from-old "written by the old daemon" >/dev/null
  cli new kv put notes from-new "written by the new daemon" >/dev/null
  head -c 200000 /dev/urandom >"$run_dir/value.bin"
  local vh
  vh=$(sha256sum <"$run_dir/value.bin" | cut -c1-16)
  cli new kv put notes binary - <"$run_dir/value.bin" >/dev/null
  check_wait mixed.kv.old-to-new "a put on the old daemon reads back on the new one" \
    kv_is new notes from-old "written by the old daemon"
  check_wait mixed.kv.new-to-old "a put on the new daemon reads back on the old one" \
    kv_is old notes from-new "written by the new daemon"
  check_wait mixed.kv.binary "a 200 KB binary value put on the new daemon is byte-identical on the old one" \
    kv_hash_is old notes binary "$vh"
  cli old kv put notes from-new "overwritten by the old daemon" >/dev/null
  cli new kv del notes from-old >/dev/null
  check_wait mixed.kv.overwrite "the old daemon's overwrite of a new key shows on the new one" \
    kv_is new notes from-new "overwritten by the old daemon"
  check_wait mixed.kv.delete "the new daemon's delete of an old key shows on the old one" \
    kv_absent old notes from-old

  say "-- folder: create on both sides"
  f_write old hello.txt "hello from old"
  f_write old dir/nested/a.txt "nested, from old"
  f_write old empty.txt
  f_write old run.sh "#!/bin/sh" && f_chmod old run.sh 755
  f_write old small2.txt "to be renamed"
  f_big old big-old.bin
  f_write new b.txt "hello from new"
  f_write new dir/b2.txt "to be deleted"
  f_write new dir/nested/c.txt "nested, from new"
  f_big new big-new.bin
  converge mixed.folder.create "files created on both sides (two ${big_mib} MiB)" old new

  say "-- folder: edit, delete, rename on both sides"
  local fo fn
  fo=$(q old "folder('docs')['fetched_bytes']")
  fn=$(q new "folder('docs')['fetched_bytes']")
  f_write old b.txt "edited by old"
  f_rm old dir/b2.txt
  f_patch old big-new.bin
  f_mv old small2.txt renamed/small2.txt
  f_write new hello.txt "edited by new"
  f_rm new empty.txt
  f_patch new big-old.bin
  f_mv new dir/nested dir/nested2
  converge mixed.folder.edit "edits, deletes, renames and 64 KiB patches of the big files on both sides" old new
  say "    fetched for it: old $(($(q old "folder('docs')['fetched_bytes']") - fo)) B, new $(($(q new "folder('docs')['fetched_bytes']") - fn)) B"

  say "-- folder: rename the big files"
  fo=$(q old "folder('docs')['fetched_bytes']")
  fn=$(q new "folder('docs')['fetched_bytes']")
  f_mv old big-old.bin archive/big-old.bin
  f_mv new big-new.bin archive/big-new.bin
  converge mixed.folder.rename "a ${big_mib} MiB file renamed on each side" old new
  say "    fetched for it: old $(($(q old "folder('docs')['fetched_bytes']") - fo)) B, new $(($(q new "folder('docs')['fetched_bytes']") - fn)) B"

  local c
  c=$(conflict_copies "${DIR[old]}" "${DIR[new]}")
  if [ "$c" = 0 ]; then pass mixed.no-conflicts "no conflict copies on either side"; else fail mixed.no-conflicts "$c conflict copies"; fi
  check_roots mixed.roots old new docs notes
  stop_node old
  local rc_old=$stop_rc
  stop_node new
  if [ "$rc_old" = 0 ] && [ "$stop_rc" = 0 ]; then
    pass mixed.stop "both stopped on SIGTERM with exit status 0"
  else
    fail mixed.stop "exit status after SIGTERM: old $rc_old, new $stop_rc"
  fi
  say "-- mixed mesh took $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------
# 3. Upgrade in place

up_peer_agree() { same_roots up peer data && same_roots up peer kv; }
no_legacy() { ! compgen -G "${HOMEDIR[$1]}/state/folder-*.redb" >/dev/null; }
# A complete session between up and peer in both shares, started at or after $1 (ms since the
# epoch); sessions are listed by the side that started them.
sessions_since() {
  true_q up "len(sessions_with('$peer_pid', 'data', $1)) > 0 and len(sessions_with('$peer_pid', 'kv', $1)) > 0" ||
    true_q peer "len(sessions_with('$up_id', 'data', $1)) > 0 and len(sessions_with('$up_id', 'kv', $1)) > 0"
}
after_upgrade_kv() {
  kv_is peer kv after-up "put on up after the upgrade" &&
    kv_is up kv after-peer "put on peer after the upgrade" &&
    kv_is up kv k-up "overwritten on peer"
}

upgrade() {
  step "Upgrade in place: node 'up' runs $old_rev, then $new_rev on the same home; 'peer' stays on $old_rev"
  local t0=$SECONDS
  REF="$run_dir/upgrade-ref"
  mkdir -p "$REF"
  init_node peer "$old_bin"
  start_node peer
  init_node up "$old_bin" "$(listen_addr peer)"
  start_node up
  DIR[up]="$run_dir/up-folder/data" DIR[peer]="$run_dir/peer-folder/data"
  local token
  token=$(cli up share create --folder "${DIR[up]}" 2>/dev/null) || die "up: share create --folder failed"
  cli peer share join "$token" --folder "${DIR[peer]}" >/dev/null || die "peer: share join --folder failed"
  token=$(cli up share create --records kv 2>/dev/null) || die "up: share create --records failed"
  cli peer share join "$token" --records kv >/dev/null || die "peer: share join --records failed"
  wait_until "$timeout" "up and peer connected" connected up peer data kv || die "up and peer did not connect"

  say "-- both on $old_rev: files and records from both sides"
  f_write up u.txt "from up"
  f_write up docs/u2.txt "from up, nested"
  f_big up big-up.bin
  f_write peer p.txt "from peer"
  f_big peer big-peer.bin
  f_write peer shared.txt "edited on both, one after the other"
  cli up kv put kv k-up "from up" >/dev/null
  cli peer kv put kv k-peer "from peer" >/dev/null
  converge upgrade.before "before the upgrade, both old" up peer
  wait_until "$timeout" "shared.txt on up" test -f "${DIR[up]}/shared.txt" || true
  f_write up shared.txt "edited on up after the peer wrote it"
  converge upgrade.before.edit "an edit on up of a peer's file, before the upgrade" up peer
  wait_until "$timeout" "records on both" kv_is up kv k-peer "from peer" || true
  wait_until "$timeout" "records on both" kv_is peer kv k-up "from up" || true
  wait_until "$timeout" "both folders idle" idle up data || true
  wait_until "$timeout" "both folders idle" idle peer data || true
  if ! wait_until "$timeout" "equal roots" up_peer_agree; then
    fail upgrade.before.roots "up and peer never agreed before the upgrade; upgrade checks skipped"
    return
  fi

  local legacy
  legacy=$(cd "${HOMEDIR[up]}/state" && ls folder-*.redb 2>/dev/null || true)
  if [ -z "$legacy" ]; then
    fail upgrade.precondition "the old daemon left no state/folder-*.redb; nothing to migrate (is $old_rev really the old layout?)"
    return
  fi
  local root_data root_kv entries_data entries_kv local_entries peer_fetched peer_served
  root_data=$(q up "share('data')['root']")
  root_kv=$(q up "share('kv')['root']")
  entries_data=$(q up "share('data')['entries']")
  entries_kv=$(q up "share('kv')['entries']")
  local_entries=$(q up "folder('data')['local_entries']")
  peer_fetched=$(q peer "folder('data')['fetched_bytes']")
  peer_served=$(q peer "folder('data')['served_bytes']")
  up_id=$(peer_id up)
  say "    before: data root ${root_data:0:16} ($entries_data entries, $local_entries synced paths on up), kv root ${root_kv:0:16} ($entries_kv entries); peer fetched $peer_fetched B, served $peer_served B; up has $legacy"

  say "-- stop up ($old_rev) with SIGTERM, start $new_rev on its home"
  stop_node up
  if [ "$stop_rc" = 0 ]; then
    pass upgrade.old-stop "the old daemon stopped on SIGTERM with exit status 0 in $stop_secs s"
  else
    fail upgrade.old-stop "the old daemon's exit status after SIGTERM: $stop_rc"
  fi
  local t_up
  t_up=$(now_ms)
  BIN[up]=$new_bin
  start_node up
  local mig
  if wait_until "$timeout" "state/folder-*.redb gone" no_legacy up; then
    mig=$(plain_log up | grep -o 'migrated .*' | tail -n 1 | sed "s|${HOMEDIR[up]}/||" || true)
    pass upgrade.migrated "$legacy removed; state/ now holds $(cd "${HOMEDIR[up]}/state" && ls | tr '\n' ' ')${mig:+; log: $mig}"
  else
    fail upgrade.migrated "$legacy still there after ${timeout} s"
  fi

  say "-- settle: up connected, its first scan done, a complete session with the peer since the restart"
  peer_pid=$(peer_id peer)
  wait_until "$timeout" "up and peer connected" connected up peer data kv || true
  wait_until "$timeout" "up's first scan" idle up data || true
  # Anti-entropy runs a session at least every 10 s; one completed since the restart, in each
  # share, proves the two compared their summaries with the new daemon up.
  local t=$SECONDS
  if wait_until "$timeout" "sessions since the restart" sessions_since "$t_up"; then
    pass upgrade.resync "the upgraded daemon reconnected and completed sessions in both shares with the old peer ($((SECONDS - t)) s)"
  else
    fail upgrade.resync "no completed session between up and peer in both shares since the restart"
  fi

  local ev="" ok=1 v
  v=$(q up "share('data')['root']"); [ "$v" = "$root_data" ] || { ok=0; ev+="up data root ${v:0:16} != ${root_data:0:16}; "; }
  v=$(q peer "share('data')['root']"); [ "$v" = "$root_data" ] || { ok=0; ev+="peer data root ${v:0:16} != ${root_data:0:16}; "; }
  v=$(q up "share('kv')['root']"); [ "$v" = "$root_kv" ] || { ok=0; ev+="up kv root ${v:0:16} != ${root_kv:0:16}; "; }
  v=$(q peer "share('kv')['root']"); [ "$v" = "$root_kv" ] || { ok=0; ev+="peer kv root ${v:0:16} != ${root_kv:0:16}; "; }
  v=$(q up "share('data')['entries']"); [ "$v" = "$entries_data" ] || { ok=0; ev+="up data entries $v != $entries_data; "; }
  v=$(q up "folder('data')['local_entries']"); [ "$v" = "$local_entries" ] || { ok=0; ev+="up synced paths $v != $local_entries; "; }
  v=$(($(q peer "folder('data')['fetched_bytes']") - peer_fetched)); [ "$v" = 0 ] || { ok=0; ev+="peer fetched $v B; "; }
  v=$(($(q peer "folder('data')['served_bytes']") - peer_served)); [ "$v" = 0 ] || { ok=0; ev+="peer served $v B; "; }
  v=$(conflict_copies "${DIR[up]}" "${DIR[peer]}"); [ "$v" = 0 ] || { ok=0; ev+="$v conflict copies; "; }
  same_trees "$REF" "${DIR[up]}" "${DIR[peer]}" || { ok=0; ev+="folders differ from the reference; "; }
  if [ "$ok" = 1 ]; then
    pass upgrade.no-new-versions "after the upgrade, data and kv roots unchanged on both (${root_data:0:16}, ${root_kv:0:16}), $entries_data entries and $local_entries synced paths as before, peer fetched and served 0 B since, no conflict copies, folders unchanged"
  else
    fail upgrade.no-new-versions "${ev%; }"
  fi

  say "-- edits after the upgrade, both ways"
  local fu
  fu=$(q up "folder('data')['fetched_bytes']")
  f_write up u.txt "edited on up after the upgrade"
  f_write up after/new-on-up.txt "created on up after the upgrade"
  f_rm up docs/u2.txt
  f_write peer p.txt "edited on peer after up's upgrade"
  f_patch peer big-up.bin
  f_mv peer big-peer.bin moved/big-peer.bin
  cli up kv put kv after-up "put on up after the upgrade" >/dev/null
  cli peer kv put kv after-peer "put on peer after the upgrade" >/dev/null
  cli peer kv put kv k-up "overwritten on peer" >/dev/null
  converge upgrade.after.folder "edits on both sides after the upgrade (64 KiB patch of a ${big_mib} MiB file on the peer, a rename, a delete)" up peer
  v=$(($(q up "folder('data')['fetched_bytes']") - fu))
  if [ "$v" -lt $(((big_mib << 20) / 2)) ]; then
    pass upgrade.after.pages "for the 64 KiB patch of the ${big_mib} MiB file up fetched $v B (its migrated chunk list was used, not the whole file)"
  else
    fail upgrade.after.pages "for the 64 KiB patch of the ${big_mib} MiB file up fetched $v B"
  fi
  check_wait upgrade.after.kv "records put on each side after the upgrade read back on the other" \
    after_upgrade_kv
  check_roots upgrade.after.roots up peer data kv

  say "-- restart the new daemon"
  wait_until "$timeout" "up idle" idle up data || true
  root_data=$(q up "share('data')['root']")
  root_kv=$(q up "share('kv')['root']")
  local starts
  starts=$(grep -c '^---- start' "${HOMEDIR[up]}/daemon.log")
  stop_node up
  local rc=$stop_rc secs=$stop_secs
  t_up=$(now_ms)
  start_node up
  wait_until "$timeout" "up connected" connected up peer data kv || true
  wait_until "$timeout" "up's first scan" idle up data || true
  wait_until "$timeout" "sessions since the restart" sessions_since "$t_up" || true
  ev="" ok=1
  [ "$rc" = 0 ] || { ok=0; ev+="exit status after SIGTERM $rc; "; }
  v=$(q up "share('data')['root']"); [ "$v" = "$root_data" ] || { ok=0; ev+="data root changed over the restart; "; }
  v=$(q up "share('kv')['root']"); [ "$v" = "$root_kv" ] || { ok=0; ev+="kv root changed over the restart; "; }
  up_peer_agree || { ok=0; ev+="roots differ from the peer's; "; }
  no_legacy up || { ok=0; ev+="a folder-*.redb is back; "; }
  v=$(plain_log up | awk -v n=$((starts + 1)) '/^---- start/ { i++ } i == n && /migrated/' | wc -l)
  [ "$v" = 0 ] || { ok=0; ev+="migrated again on the second start; "; }
  v=$(conflict_copies "${DIR[up]}" "${DIR[peer]}"); [ "$v" = 0 ] || { ok=0; ev+="$v conflict copies; "; }
  if [ "$ok" = 1 ]; then
    pass upgrade.restart "SIGTERM: exit 0 in ${secs} s; after the restart no migration, roots unchanged and equal to the peer's, no conflict copies"
  else
    fail upgrade.restart "${ev%; }"
  fi
  cli peer kv put kv after-restart "put on peer after up's restart" >/dev/null
  f_write up after-restart.txt "written on up after its restart"
  check_wait upgrade.restart.kv "a record put on the peer after the restart reads back on up" \
    kv_is up kv after-restart "put on peer after up's restart"
  converge upgrade.restart.folder "a file written on up after its restart" up peer
  say "-- upgrade took $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------

# The daemons' logs without colour codes.
plain_log() { sed 's/\x1b\[[0-9;]*m//g' "$run_dir/$1/daemon.log"; }

logs_check() {
  local n name panics=0 errors=0 warns=0 where=""
  for name in old new peer up; do
    [ -f "$run_dir/$name/daemon.log" ] || continue
    n=$(plain_log "$name" | grep -c -i 'panicked' || true)
    panics=$((panics + n))
    [ "$n" = 0 ] || where+="$name "
    errors=$((errors + $(plain_log "$name" | grep -c ' ERROR ' || true)))
    warns=$((warns + $(plain_log "$name" | grep -c ' WARN ' || true)))
  done
  if [ "$panics" = 0 ]; then
    pass logs "no panic in any daemon log ($errors ERROR and $warns WARN lines in all)"
  else
    fail logs "$panics panic lines in the logs of: $where"
  fi
  for name in old new peer up; do
    [ -f "$run_dir/$name/daemon.log" ] || continue
    plain_log "$name" | grep -E ' (ERROR|WARN) ' | cut -c29- | sed "s/^/    $name: /" | head -n 5 || true
  done
}

command -v python3 >/dev/null || die "needs python3"
mkdir -p "$compat_dir"
# A run writes about 250 MB; on a full disk daemons fail in confusing ways, so say so up front.
free_mb=$(df -Pm "$compat_dir" | awk 'NR == 2 { print $4 }')
[ "$free_mb" -ge 600 ] || die "only $free_mb MB free in $compat_dir; a run needs about 600 MB (builds need more)"
step "Build"
build_old
build_new
[ -x "$old_bin" ] && [ -x "$new_bin" ] || die "missing binaries: $old_bin, $new_bin"
mkdir -p "$compat_dir"
run_dir=$(mktemp -d "$compat_dir/run.XXXXXX")
say "run directory: $run_dir"
mixed_mesh
upgrade
logs_check
finished=1
