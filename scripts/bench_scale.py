#!/usr/bin/env python3
"""Scale benchmark of meshsync folders: one big tree, two daemons on loopback (see
bench-scale.sh for how to run it).

Phases, each timed, with both daemons' resident memory (now and peak) and CPU time:
  index    A indexes the generated tree (its first full scan)
  sync     B joins and receives every file (initial sync A -> B), with the bytes B wrote (through
           system calls, and to storage: the files and its store) per file; with --syncs N, N
           times, each to a fresh B (new home, empty folder), and the medians
  verify   B's periodic verification walk, which waits for the sync's downloads, runs a slice at
           a time: time until it ends, B's CPU, paths checked, and a file written on B while it
           runs, timed until A has it
  idle     nothing happens for --idle seconds: RSS after it, CPU spent
  restart  B is stopped and started: time until its API answers, until its status does
           (with the folder's part), until it is idle again,
           files re-read by its scan, RSS after
  change   1 % of the files are rewritten on A: time until B has every new content
  delete   a tenth of the top-level subtrees are deleted on A: time until gone on B
and the size of each daemon's store, per file (the file, and each table's pages as
GET /v1/store reads them). Then, side by side in the same run (if the
Debian package is installed; --syncthing=no skips it), Syncthing indexes the same tree afresh
and syncs it A -> B: time, peak RSS and CPU of both, RSS after --idle seconds.
"""

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_folders import (  # noqa: E402
    Api, BenchError, Procs, Syncthing, descendants, log, proc_field, wait_until)

TIMEOUT = 3600


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def io_bytes(pid):
    """Bytes a process wrote through system calls (`wchar`) and caused to be written to storage
    (`write_bytes`), from /proc/PID/io; None if it is gone."""
    try:
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(fields["wchar"]), int(fields["write_bytes"])


class Tree:
    """The generated tree: a fixed-seed list of (relative path, size); contents derive from the
    path and a version number, so a rewrite is known without storing it."""

    def __init__(self, files, mix, seed):
        rng = random.Random(seed)
        self.entries = []
        # Wide and deep: 10 top-level directories, 10 below each, then leaf directories of
        # about 100 files (1,000 leaves at 10^5 files).
        leaves = max(1, files // 100)
        for i in range(files):
            leaf = i % leaves
            rel = f"t{leaf % 10}/m{(leaf // 10) % 10}/l{leaf // 100}/f{i}.bin"
            if mix == "uniform":
                size = 1024
            else:
                roll = rng.random()
                if roll < 0.98:
                    size = rng.randint(100, 4096)
                elif roll < 0.999:
                    size = rng.randint(16 << 10, 256 << 10)
                else:
                    size = rng.randint(1 << 20, 4 << 20)
            self.entries.append((rel, size))
        self.bytes = sum(s for _, s in self.entries)

    @staticmethod
    def content(rel, size, version):
        head = f"{rel} v{version}\n".encode()
        block = (head * (4096 // len(head) + 1))[:4096]
        return (block * (size // 4096 + 1))[:size]

    def write(self, root, which=None, version=0):
        for rel, size in which if which is not None else self.entries:
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(self.content(rel, size, version))


class Daemon:
    def __init__(self, bench, name):
        self.bench, self.name = bench, name
        self.home = os.path.join(bench.workdir, f"home-{name}")
        self.folder = os.path.join(bench.workdir, name)
        self.proc = None
        self.api = None
        self.peer_id = None

    def cli(self, *args):
        import subprocess
        env = dict(os.environ, RUST_LOG="warn")
        env.pop("MESHSYNC_HOME", None)
        p = subprocess.run([self.bench.binary, "--home", self.home, *args],
                           capture_output=True, text=True, env=env, timeout=600)
        if p.returncode != 0:
            raise BenchError(f"meshsync {self.name}: {' '.join(args)} failed: {p.stderr.strip()}")
        return p.stdout

    def init(self, peers=()):
        args = ["init", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--no-mdns"]
        for p in peers:
            args += ["--peer", p]
        self.peer_id = self.cli(*args).strip()

    def start(self):
        """Starts the daemon; returns seconds until its API answered."""
        env = dict(os.environ, RUST_LOG=self.bench.rust_log)
        env.pop("MESHSYNC_HOME", None)
        addr_file = os.path.join(self.home, "api.addr")
        if os.path.exists(addr_file):
            os.remove(addr_file)
        t0 = time.perf_counter()
        self.proc = self.bench.procs.start(
            [self.bench.binary, "--home", self.home, "run", "--no-mdns"],
            os.path.join(self.home, "daemon.log"), env=env)
        token = open(os.path.join(self.home, "api-token")).read().strip()

        def ready():
            if self.proc.poll() is not None:
                raise BenchError(f"meshsync {self.name} exited; see {self.home}/daemon.log")
            try:
                addr = open(addr_file).read().strip()
            except FileNotFoundError:
                return False
            if not addr:
                return False
            api = Api(int(addr.rsplit(":", 1)[1]), {"Authorization": f"Bearer {token}"})
            try:
                api.request("GET", "/health")
            except Exception:  # not listening yet
                api.close()
                return False
            self.api = api
            return True

        wait_until(f"meshsync {self.name} to answer", 120, ready, interval=0.01)
        return time.perf_counter() - t0

    def stop(self):
        if self.api:
            self.api.close()
            self.api = None
        if self.proc is not None:
            self.bench.procs.stop(self.proc, grace=120)
            self.proc = None

    def folder_share(self):
        for s in self.api.request("GET", "/v1/status")["shares"]:
            if s.get("kind") == "folder":
                return s
        return None

    def rss_mib(self):
        kib = proc_field(self.proc.pid, "VmRSS")
        return None if kib is None else kib / 1024

    def peak_mib(self):
        kib = proc_field(self.proc.pid, "VmHWM")
        return None if kib is None else kib / 1024

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def written(self):
        return io_bytes(self.proc.pid)

    def store_bytes(self):
        total = 0
        for dirpath, _, names in os.walk(os.path.join(self.home, "state")):
            for n in names:
                try:
                    total += os.path.getsize(os.path.join(dirpath, n))
                except OSError:
                    pass
        return total


class Bench:
    def __init__(self, args):
        self.args = args
        self.binary = os.path.abspath(args.binary)
        self.rust_log = args.log
        base = args.dir or tempfile.gettempdir()
        self.workdir = tempfile.mkdtemp(prefix="meshsync-bench-scale-", dir=base)
        self.procs = Procs(self.workdir)
        self.tree = Tree(args.files, args.mix, args.seed)
        self.a = Daemon(self, "A")
        self.b = Daemon(self, "B")
        self.rows = []
        self.result = {"files": args.files, "mix": args.mix, "bytes": self.tree.bytes}
        self.syncthing = None

    def row(self, phase, seconds, **extra):
        entry = {"phase": phase, "seconds": seconds}
        for d in (self.a, self.b):
            if d.proc is not None:
                entry[f"{d.name}_rss_mib"] = d.rss_mib()
                entry[f"{d.name}_peak_mib"] = d.peak_mib()
                entry[f"{d.name}_cpu_s"] = d.cpu()
        entry.update(extra)
        self.rows.append(entry)
        log(f"{phase}: {json.dumps(entry)}")

    def idle_both(self, what, timeout=TIMEOUT):
        def done():
            for d in (self.a, self.b):
                if d.proc is None:
                    continue
                s = d.folder_share()
                f = s and s.get("folder")
                if not f or f["state"] != "idle" or f["needed_files"] or f["needed_bytes"]:
                    return False
            return True
        wait_until(what, timeout, done, interval=0.2)

    def b_has(self, entries, version):
        for rel, size in entries:
            try:
                with open(os.path.join(self.b.folder, rel), "rb") as f:
                    if f.read() != Tree.content(rel, size, version):
                        return False
            except OSError:
                return False
        return True

    def run(self):
        t = self.tree
        log(f"generating {len(t.entries)} files ({t.bytes / 2**20:.0f} MiB) in {self.workdir}")
        t.write(self.a.folder)
        os.sync()

        self.a.init()
        self.a.start()
        listen = self.a.api.request("GET", "/v1/status")["listen_addrs"][0]
        t0 = time.perf_counter()
        token = self.a.cli("share", "create", "--folder", self.a.folder).strip()

        slowest = [0.0]

        def indexed():
            asked = time.perf_counter()
            s = self.a.folder_share()
            slowest[0] = max(slowest[0], time.perf_counter() - asked)
            f = s and s.get("folder")
            return f and f["state"] == "idle" and s.get("files", 0) >= len(t.entries)
        wait_until("A to index the tree", TIMEOUT, indexed, interval=0.2)
        # The slowest status answer while indexing: the API must answer throughout.
        self.row("index", time.perf_counter() - t0, status_slowest_s=slowest[0])

        per_file, seconds = [], []
        for run in range(self.args.syncs):
            if run:
                # A fresh B (new identity, empty home and folder) against the same A: the
                # initial sync again, for its spread between runs.
                self.b.stop()
                shutil.rmtree(self.b.home)
                shutil.rmtree(self.b.folder)
                os.sync()
            self.sync_b(listen, token, "sync" if not run else f"sync #{run + 1}")
            per_file.append(round(self.rows[-1]["B_cpu_ms_per_file"], 4))
            seconds.append(round(self.rows[-1]["seconds"], 2))
        if len(per_file) > 1:
            def median(values):
                return sorted(values)[len(values) // 2]
            self.result["syncs"] = {
                "runs": len(per_file),
                "seconds": seconds,
                "seconds_median": median(seconds),
                "B_cpu_ms_per_file": per_file,
                "B_cpu_ms_per_file_median": median(per_file),
            }

        self.idle_both("both idle after the sync")
        self.verify_b()
        cpu0 = {d.name: d.cpu() for d in (self.a, self.b)}
        time.sleep(self.args.idle)
        idle_cpu = {f"{d.name}_idle_cpu_pct": 100 * (d.cpu() - cpu0[d.name]) / self.args.idle
                    for d in (self.a, self.b)}
        self.row("idle", float(self.args.idle), **idle_cpu)

        self.b.stop()
        answered = self.b.start()
        t0 = time.perf_counter()
        # The first full status, with the folder's part (its actor answers once it has loaded
        # what was synced), apart from the API's first answer of any kind.
        self.b.folder_share()
        status_after = answered + time.perf_counter() - t0
        self.idle_both("B idle after its restart")
        s = self.b.folder_share()
        self.row("restart", time.perf_counter() - t0, B_api_after_s=answered,
                 B_status_after_s=status_after, B_hashed_files=s["folder"].get("hashed_files"))
        time.sleep(min(20, self.args.idle))
        self.row("restart+20s", 0.0)

        changed = random.Random(2).sample(t.entries, max(1, len(t.entries) // 100))
        t0 = time.perf_counter()
        t.write(self.a.folder, changed, version=1)
        wait_until("B to have the changed files", TIMEOUT,
                   lambda: self.b_has(changed, 1), interval=0.2)
        self.row("change 1%", time.perf_counter() - t0, changed_files=len(changed))
        self.idle_both("both idle after the change")

        gone = [f"t{i}" for i in range(0, 10, 10)] if len(t.entries) >= 10 else []
        t0 = time.perf_counter()
        for top in gone:
            shutil.rmtree(os.path.join(self.a.folder, top), ignore_errors=True)
        wait_until("B to delete the subtree", TIMEOUT,
                   lambda: not any(os.path.exists(os.path.join(self.b.folder, g)) for g in gone),
                   interval=0.2)
        self.row("delete subtree", time.perf_counter() - t0, deleted_dirs=gone)
        self.idle_both("both idle after the delete")
        time.sleep(min(60, self.args.idle))
        self.row("after work + idle", 0.0)

        for d in (self.a, self.b):
            self.result[f"{d.name}_store_bytes"] = d.store_bytes()
            self.result[f"{d.name}_store_bytes_per_file"] = d.store_bytes() / len(t.entries)
            # What the file holds (GET /v1/store reads every page): bytes in each table's pages
            # per file of the tree (the deleted tenth still has its tombstones).
            usage = d.api.request("GET", "/v1/store", timeout=TIMEOUT)
            self.result[f"{d.name}_store_in_tables_per_file"] = round(
                usage["tables_bytes"] / len(t.entries))
            self.result[f"{d.name}_store_tables"] = {
                table["name"]: {
                    "rows": table["entries"],
                    "bytes_per_file": round((table["stored_bytes"] + table["overhead_bytes"]
                                             + table["fragmented_bytes"]) / len(t.entries)),
                    "data_bytes_per_file": round(table["stored_bytes"] / len(t.entries)),
                }
                for table in usage["tables"] if table["entries"]
            }
        self.result["rows"] = self.rows
        if self.args.syncthing == "yes":
            for d in (self.a, self.b):
                d.stop()
            self.run_syncthing()

    def sync_b(self, listen, token, phase):
        """B starts, joins A's share and receives the whole tree: a row."""
        t = self.tree
        self.b.init(peers=[listen])
        self.b.start()
        a_cpu0 = self.a.cpu()
        t0 = time.perf_counter()
        self.b.cli("share", "join", token, "--folder", self.b.folder)

        def synced():
            s = self.b.folder_share()
            f = s and s.get("folder")
            return (f and s.get("files", 0) >= len(t.entries) and not f["needed_files"]
                    and f["state"] == "idle")
        wait_until("B to receive the tree", TIMEOUT, synced, interval=0.2)
        seconds = time.perf_counter() - t0
        sample = random.Random(1).sample(t.entries, min(1000, len(t.entries)))
        if not self.b_has(sample, 0):
            raise BenchError("B's files differ from A's after the initial sync")
        # What B wrote: the files and its store's pages (the file system's journal is not
        # counted). Bytes written cost CPU, the kernel's included.
        wrote = self.b.written() or (0, 0)
        self.row(phase, seconds, A_sync_cpu_s=self.a.cpu() - a_cpu0,
                 B_cpu_ms_per_file=1000 * self.b.cpu() / len(t.entries),
                 B_wrote_mib=wrote[0] / 2**20, B_disk_writes_mib=wrote[1] / 2**20,
                 B_wrote_kib_per_file=wrote[0] / 1024 / len(t.entries))

    def verify_b(self):
        """B's periodic verification walk, which waited for the sync's downloads (checked
        every minute): from the sync's end until the walk ends, B's CPU meanwhile, the paths it
        checked; and while it runs, a file written on B, timed until A has it."""
        folder = self.b.folder_share()["folder"]
        if "last_verified_at" not in folder:
            log("no verify phase: this daemon does not say when it verified its folder")
            return
        before = folder["last_verified_at"]
        cpu0, t0 = self.b.cpu(), time.perf_counter()
        walk = {}
        probe = "verify-probe.bin"
        probe_data = b"written on B while it verifies\n"

        def done():
            f = self.b.folder_share()["folder"]
            now = time.perf_counter()
            if f.get("verifying") and "started" not in walk:
                walk["started"] = now
                with open(os.path.join(self.b.folder, probe), "wb") as out:
                    out.write(probe_data)
                walk["probe_written"] = now
            if "probe_written" in walk and "probe_arrived" not in walk:
                try:
                    with open(os.path.join(self.a.folder, probe), "rb") as f_in:
                        if f_in.read() == probe_data:
                            walk["probe_arrived"] = now
                except OSError:
                    pass
            walk["paths"] = f.get("verified_paths")
            return f.get("last_verified_at") != before and (
                "probe_written" not in walk or "probe_arrived" in walk)
        wait_until("B's verification walk to end", TIMEOUT, done, interval=0.2)
        extra = {"B_walk_cpu_seconds": self.b.cpu() - cpu0, "B_verified_paths": walk["paths"]}
        if "started" in walk:
            extra["B_walk_s"] = time.perf_counter() - walk["started"]
            extra["probe_B_to_A_s"] = walk["probe_arrived"] - walk["probe_written"]
        self.row("verify", time.perf_counter() - t0, **extra)
        self.idle_both("both idle after the verification")

    def run_syncthing(self):
        """The initial sync of the same tree with Syncthing, on the same machine, after
        meshsync's daemons have stopped: index on A, then B unpaused and receiving."""
        t = self.tree
        shim = types.SimpleNamespace(
            wl=types.SimpleNamespace(files=len(t.entries)), workdir=self.workdir,
            procs=self.procs)
        st = Syncthing(shim)
        self.syncthing = st
        log(f"syncthing: writing the tree afresh in {st.a_dir}")
        t.write(st.a_dir)
        os.makedirs(os.path.join(st.a_dir, ".stfolder"))
        os.makedirs(os.path.join(st.b_dir, ".stfolder"))
        os.sync()
        st.configure()

        def cpu(node):
            return sum(cpu_seconds(pid) or 0 for pid in descendants(st.procs[node].pid))

        def rss(node, field):
            return max((proc_field(pid, field) or 0)
                       for pid in descendants(st.procs[node].pid)) / 1024

        out = {}
        t0 = time.perf_counter()
        st.start("A")

        def indexed():
            s = st.db_status("A")
            return s["state"] == "idle" and s["localFiles"] >= len(t.entries)
        wait_until("syncthing A to index the tree", TIMEOUT, indexed, interval=0.2)
        out["index_s"] = time.perf_counter() - t0
        out["A_index_peak_mib"] = rss("A", "VmHWM")
        st.start("B")

        def connected():
            c = st.get("B", "/rest/system/connections")["connections"]
            return c.get(st.ids["A"], {}).get("connected")
        wait_until("syncthing B to connect to A", 120, connected, interval=0.1)
        a_cpu0, b_cpu0 = cpu("A"), cpu("B")
        t0 = time.perf_counter()
        st.start_w1()

        def synced():
            s = st.db_status("B")
            return (s["state"] == "idle" and not s["needFiles"]
                    and s["localFiles"] >= len(t.entries))
        wait_until("syncthing B to receive the tree", TIMEOUT, synced, interval=0.2)
        out["sync_s"] = time.perf_counter() - t0
        sample = random.Random(1).sample(t.entries, min(1000, len(t.entries)))
        for rel, size in sample:
            with open(os.path.join(st.b_dir, rel), "rb") as f:
                if f.read() != Tree.content(rel, size, 0):
                    raise BenchError(f"syncthing: B's {rel} differs from A's")
        out["A_sync_cpu_s"] = cpu("A") - a_cpu0
        out["B_sync_cpu_s"] = cpu("B") - b_cpu0
        out["B_cpu_ms_per_file"] = 1000 * out["B_sync_cpu_s"] / len(t.entries)
        for node in "AB":
            out[f"{node}_peak_mib"] = rss(node, "VmHWM")
        time.sleep(self.args.idle)
        for node in "AB":
            out[f"{node}_rss_after_idle_mib"] = rss(node, "VmRSS")
        log(f"syncthing: {json.dumps(out)}")
        self.result["syncthing"] = out
        st.stop()
        self.syncthing = None
        shutil.rmtree(st.dir, ignore_errors=True)

    def stop(self):
        for d in (self.a, self.b):
            try:
                d.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {d.name}: {e}")
        if self.syncthing is not None:
            try:
                self.syncthing.stop()
            except Exception as e:
                log(f"stopping syncthing: {e}")
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"kept {self.workdir}")

    def report(self):
        n = self.args.files
        print(f"\nmeshsync scale: {n} files ({self.args.mix}, {self.tree.bytes / 2**20:.0f} MiB)")
        print(f"{'phase':<18} {'time':>8} {'A RSS':>8} {'A peak':>8} {'B RSS':>8} {'B peak':>8}"
              f" {'A CPU':>7} {'B CPU':>7}")
        for r in self.rows:
            def mib(k):
                v = r.get(k)
                return f"{v:.0f}M" if v is not None else "-"

            def sec(k):
                v = r.get(k)
                return f"{v:.1f}s" if v is not None else "-"
            print(f"{r['phase']:<18} {r['seconds']:>7.1f}s {mib('A_rss_mib'):>8} "
                  f"{mib('A_peak_mib'):>8} {mib('B_rss_mib'):>8} {mib('B_peak_mib'):>8} "
                  f"{sec('A_cpu_s'):>7} {sec('B_cpu_s'):>7}")
        for k, v in self.result.items():
            if k not in ("rows", "syncthing"):
                print(f"  {k}: {v:.0f}" if isinstance(v, float) else f"  {k}: {v}")
        st = self.result.get("syncthing")
        if st:
            ours = {r["phase"]: r for r in self.rows}
            index, sync = ours.get("index", {}), ours.get("sync", {})
            idle = ours.get("idle", {})
            print(f"\nside by side, same tree, same run (Syncthing after meshsync stopped)")
            print(f"{'':<28} {'meshsync':>10} {'syncthing':>10}")
            pairs = [
                ("index on A (s)", index.get("seconds"), st["index_s"]),
                ("initial sync A->B (s)", sync.get("seconds"), st["sync_s"]),
                ("A CPU in the sync (s)", sync.get("A_sync_cpu_s"), st["A_sync_cpu_s"]),
                ("B CPU per file (ms)", sync.get("B_cpu_ms_per_file"), st["B_cpu_ms_per_file"]),
                ("A peak RSS (MiB)", sync.get("A_peak_mib"), st["A_peak_mib"]),
                ("B peak RSS (MiB)", sync.get("B_peak_mib"), st["B_peak_mib"]),
                (f"A RSS after {self.args.idle} s idle (MiB)", idle.get("A_rss_mib"),
                 st["A_rss_after_idle_mib"]),
                (f"B RSS after {self.args.idle} s idle (MiB)", idle.get("B_rss_mib"),
                 st["B_rss_after_idle_mib"]),
            ]
            for name, m, s_ in pairs:
                m_text = f"{m:.2f}" if m is not None else "-"
                print(f"{name:<28} {m_text:>10} {s_:>10.2f}")
        for r in self.rows:
            extra = {k: v for k, v in r.items()
                     if k not in ("phase", "seconds") and not k.endswith(("_rss_mib",
                                                                          "_peak_mib",
                                                                          "_cpu_s"))}
            if extra:
                print(f"  {r['phase']}: " + ", ".join(
                    f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in extra.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--mix", choices=["uniform", "mixed"], default="uniform")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--idle", type=int, default=60)
    ap.add_argument("--syncs", type=int, default=1,
                    help="initial syncs to a fresh B, one after another (B's CPU varies "
                         "between runs: the median of several is steadier)")
    ap.add_argument("--dir")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--log", default="meshsync=info,warn")
    ap.add_argument("--json")
    ap.add_argument("--syncthing", choices=["auto", "yes", "no"], default="auto")
    args = ap.parse_args()
    if args.syncthing == "auto":
        args.syncthing = "yes" if shutil.which("syncthing") and args.files <= 200_000 else "no"
        if args.syncthing == "no":
            log("no side-by-side Syncthing run (not installed, or more than 200,000 files)")
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    failed = False
    try:
        bench.run()
    except BenchError as e:
        log(f"error: {e}")
        failed = True
    finally:
        bench.stop()
    bench.report()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.result, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
