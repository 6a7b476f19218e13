#!/usr/bin/env python3
"""Folder sync benchmark: meshsync against Syncthing and rsync on the same workloads.

Called by scripts/bench-folders.sh (which builds the release binary); prints markdown.

Workloads (generated once, the same bytes for every tool):

  W1  initial sync of N files x 4 KiB in 100 directories: A has them and has indexed them,
      B is connected; the clock starts when B joins the share (meshsync `share join`,
      Syncthing: B's folder is unpaused over REST, rsync: the push starts) and stops when B's
      tree is identical to A's (every path and byte, nothing else).
  W2  one big file (256 MiB; 64 MiB with --quick) moved into A's folder (rename, so writing it
      is not timed) until B has it, identical.
  W3  1 MiB overwritten in place in the middle of it: time and bytes.
  W5  1 byte inserted at its start (the new file renamed over the old one): bytes (and time).
  W4  a 1 KiB file written on A until it is identical on B, watchers only, median of 5.

Before each timed workload a `sync` flushes what setting it up wrote (the W1 tree copied into
A, the 256 MiB staging copies), so that writeback does not compete with the tool's own writes.

Convergence: B's folder is polled every POLL_S. For one file, every change of its stat
signature (inode, size, mtime, ctime) is hashed (SHA-256) and the time of the first signature
whose content is right is taken (all three tools write a temporary file and rename it, so the
time of the observation, not of the hashing, is when the file became right). For W1 the names
are counted per poll and the whole tree is compared once they are all there.

Bytes: the TCP payload both ways on the connection(s) between the two peers, read from the
kernel (`ss -ti`: bytes_sent + bytes_received of the listening side of each connection), for
meshsync and Syncthing; rsync's own `--stats` (total bytes sent + received) for rsync. Each tool's
own counters are printed in the details too.

Peak RSS: VmHWM (the kernel's high-water mark of resident memory) of every daemon process at the
end of its run; for rsync the daemon and the forked receivers are sampled while they run.

Every process started is recorded in WORKDIR/pids and stopped on exit (the shell script's trap
kills whatever is left and removes WORKDIR). Nothing listens or connects anywhere but 127.0.0.1;
meshsync runs with --no-mdns, Syncthing with global and local discovery, relays, NAT traversal,
usage and crash reporting and upgrades off.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

POLL_S = 0.005  # convergence poll interval
W1_TIMEOUT = 300
BIG_TIMEOUT = 300
W4_TIMEOUT = 60
SETTLE_S = 1.0  # quiet time after convergence before byte counters are read
W4_REPEATS = 5
SMALL_BYTES = 1024
FILE_BYTES = 4096
DIRS = 100

TARGETS = {
    "w1": ("≤ 3 s", lambda v: v <= 3.0),
    "w2": ("≤ 0.6 s", lambda v: v <= 0.6),
    "w3_time": ("≤ 0.5 s", lambda v: v <= 0.5),
    "w3_bytes": ("≤ 1.2 MiB", lambda v: v <= 1.2 * 2**20),
    "w5_bytes": ("≤ 256 KiB", lambda v: v <= 256 * 2**10),
    "w4": ("≤ 100 ms", lambda v: v <= 0.100),
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def wait_until(what, timeout, check, interval=0.02):
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def proc_field(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def descendants(pid, kids=None):
    kids = kids if kids is not None else children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


# Names the tools keep in a folder that are not content.
TOOL_NAMES = re.compile(
    r"(^|/)(\.meshsync($|/)|\.meshsync-tmp-|\.stfolder($|/)|\.stversions($|/)|\.syncthing\..*\.tmp$|~syncthing~.*\.tmp$|\.stignore$)"
)


def tree_of(root):
    """{relative path: ('d',) | ('f', size, sha256) | ('l', target)} without tool metadata."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        for d in list(dirnames):
            rel = rel_dir + d
            if TOOL_NAMES.search(rel):
                dirnames.remove(d)
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                out[rel] = ("l", os.readlink(os.path.join(dirpath, d)))
                dirnames.remove(d)
            else:
                out[rel] = ("d",)
        for name in filenames:
            rel = rel_dir + name
            if TOOL_NAMES.search(rel):
                continue
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            else:
                out[rel] = ("f", os.path.getsize(p), sha256_file(p))
    return out


# ---------------------------------------------------------------- workloads


class Workload:
    """The generated data, written once under WORKDIR/src and copied for each tool."""

    def __init__(self, workdir, files, big_bytes):
        self.dir = os.path.join(workdir, "src")
        self.files = files
        self.per_dir = files // DIRS
        self.big_bytes = big_bytes
        self.patch_offset = big_bytes // 2
        self.w1_dir = os.path.join(self.dir, "w1")
        self.big = {k: os.path.join(self.dir, f"big.{k}") for k in ("w2", "w3", "w5")}
        self.sha = {}
        self.patch = None
        self.w1_tree = None
        self.w1_names = None

    def generate(self):
        log(f"generating workloads: {self.files} files x {FILE_BYTES} B in {DIRS} directories, "
            f"a {self.big_bytes >> 20} MiB file")
        rng = random.Random(20240601)
        os.makedirs(self.w1_dir)
        self.w1_names = {}
        for d in range(DIRS):
            dname = f"d{d:03d}"
            os.mkdir(os.path.join(self.w1_dir, dname))
            names = set()
            for i in range(self.per_dir):
                fname = f"f{i:04d}.bin"
                with open(os.path.join(self.w1_dir, dname, fname), "wb") as f:
                    f.write(rng.randbytes(FILE_BYTES))
                names.add(fname)
            self.w1_names[dname] = names
        self.w1_tree = tree_of(self.w1_dir)
        # The big file, then 1 MiB overwritten in the middle, then 1 byte inserted at the start.
        h2, h3 = hashlib.sha256(), hashlib.sha256()
        self.patch = rng.randbytes(1 << 20)
        piece = 1 << 20
        with open(self.big["w2"], "wb") as f2, open(self.big["w3"], "wb") as f3, \
                open(self.big["w5"], "wb") as f5:
            f5.write(b"\xab")
            h5 = hashlib.sha256(b"\xab")
            for off in range(0, self.big_bytes, piece):
                block = rng.randbytes(min(piece, self.big_bytes - off))
                f2.write(block)
                h2.update(block)
                if off == self.patch_offset:
                    assert len(self.patch) == len(block) or off + len(self.patch) > self.big_bytes
                    block = self.patch[:len(block)]
                f3.write(block)
                h3.update(block)
                f5.write(block)
                h5.update(block)
        assert self.patch_offset % piece == 0
        self.sha = {"w2": h2.hexdigest(), "w3": h3.hexdigest(), "w5": h5.hexdigest()}
        self.size = {"w2": self.big_bytes, "w3": self.big_bytes, "w5": self.big_bytes + 1}


def wait_tree(root, wl, timeout, extra=None):
    """Waits until `root` holds exactly W1 (plus `extra`); returns the perf_counter time of the
    poll that first saw every name, among polls that led to a verified identical tree."""
    expected = dict(wl.w1_tree)
    if extra:
        expected.update(extra)
    start = time.monotonic()
    while True:
        seen = 0
        for dname, names in wl.w1_names.items():
            try:
                present = os.listdir(os.path.join(root, dname))
            except FileNotFoundError:
                continue
            seen += len(names.intersection(present))
        now = time.perf_counter()
        if seen == wl.files:
            got = tree_of(root)
            if got == expected:
                return now
            missing = [p for p in expected if got.get(p) != expected[p]]
            unexpected = [p for p in got if p not in expected]
            if time.monotonic() - start > timeout:
                raise BenchError(f"{root} never became identical: {len(missing)} differ "
                                 f"(e.g. {missing[:3]}), {len(unexpected)} unexpected "
                                 f"(e.g. {unexpected[:3]})")
            time.sleep(0.05)
            continue
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout} s: {root} has {seen} of {wl.files} files")
        time.sleep(POLL_S)


def wait_file(path, sha, size, timeout):
    """Returns the perf_counter time of the first stat signature of `path` with content `sha`."""
    last = None
    start = time.monotonic()
    while True:
        try:
            st = os.stat(path)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except FileNotFoundError:
            sig = None
        now = time.perf_counter()
        if sig != last:
            last = sig
            if sig is not None and sig[1] == size:
                try:
                    if sha256_file(path) == sha:
                        return now
                except FileNotFoundError:
                    pass
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout} s waiting for {path} to be identical")
        time.sleep(POLL_S)


def wait_small(path, content, timeout):
    start = time.monotonic()
    while True:
        try:
            with open(path, "rb") as f:
                if f.read() == content:
                    return time.perf_counter()
        except FileNotFoundError:
            pass
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout} s waiting for {path}")
        time.sleep(0.001)


# ---------------------------------------------------------------- wire bytes


def tcp_bytes(ports):
    """{connection: bytes_sent + bytes_received} of the established TCP connections that have
    one of `ports` at either end. Each connection is counted once, at the endpoint whose
    address sorts first (both ends are on this machine, and libp2p dials from its listen port,
    so both ends can carry a listed port)."""
    out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    result = {}
    current = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            parts = line.split()
            current = None
            if len(parts) >= 4:
                local, peer = parts[-2], parts[-1]
                try:
                    lport, pport = int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])
                except ValueError:
                    continue
                if (lport in ports or pport in ports) and local < peer:
                    current = (local, peer)
                    result[current] = 0
            continue
        if current is not None:
            sent = re.search(r"\bbytes_sent:(\d+)", line)
            recv = re.search(r"\bbytes_received:(\d+)", line)
            if sent is None:  # older kernels: bytes_acked is what left
                sent = re.search(r"\bbytes_acked:(\d+)", line)
            result[current] += int(sent.group(1)) if sent else 0
            result[current] += int(recv.group(1)) if recv else 0
    return result


def tcp_delta(before, after):
    return sum(v - before.get(k, 0) for k, v in after.items())


# ---------------------------------------------------------------- process book-keeping


class Procs:
    def __init__(self, workdir):
        self.pidfile = os.path.join(workdir, "pids")
        self.lock = threading.Lock()

    def record(self, pid):
        with self.lock, open(self.pidfile, "a") as f:
            f.write(f"{pid}\n")

    def forget(self, pid):
        with self.lock:
            try:
                with open(self.pidfile) as f:
                    pids = [l.strip() for l in f if l.strip() and l.strip() != str(pid)]
                with open(self.pidfile, "w") as f:
                    f.write("".join(p + "\n" for p in pids))
            except FileNotFoundError:
                pass

    def start(self, args, log_path, env=None, cwd=None):
        logf = open(log_path, "ab")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                env=env, cwd=cwd, start_new_session=True)
        logf.close()
        self.record(proc.pid)
        return proc

    def stop(self, proc, grace=30):
        if proc is None or proc.poll() is not None:
            if proc is not None:
                self.forget(proc.pid)
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} did not stop within {grace} s of SIGTERM; killing it")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            code = None
        # Anything it left in its process group (it was started in a session of its own).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.forget(proc.pid)
        return code


class TreeSampler:
    """Samples VmHWM of a process tree (for rsync, whose daemon forks a receiver per push)."""

    def __init__(self, interval=0.02):
        self.roots = set()
        self.peak = {}  # pid -> (name, VmHWM KiB)
        self.interval = interval
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_ev.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self):
        if not self.roots:
            return
        kids = children_map()
        for root in list(self.roots):
            for pid in descendants(root, kids):
                hwm = proc_field(pid, "VmHWM")
                if hwm is None:
                    continue
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        name = f.read().strip()
                except OSError:
                    name = "?"
                prev = self.peak.get(pid, (name, 0))[1]
                self.peak[pid] = (name, max(prev, hwm))

    def start(self):
        self.thread.start()

    def stop(self):
        self.sample()
        self.stop_ev.set()
        self.thread.join()


class Api:
    """Keep-alive HTTP client on 127.0.0.1."""

    def __init__(self, port, headers):
        self.port, self.headers, self.conn = port, headers, None

    def request(self, method, path, body=None, timeout=60):
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                text = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 1:
                    raise
        if resp.status // 100 != 2:
            raise BenchError(f"{method} {path} answered {resp.status}: {text[:300]!r}")
        return json.loads(text) if text.strip() else None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def mib(n):
    return n / 2**20


def quiesce():
    """Flushes what setting up a workload wrote (a 256 MiB staging copy, the W1 tree), so its
    writeback does not compete with the tool's own writes once the clock runs."""
    subprocess.run(["sync"], check=False)


# ---------------------------------------------------------------- tools


class FolderTool:
    """Two daemons A and B syncing one folder; subclasses know how to drive one tool."""

    name = "?"

    def __init__(self, bench):
        self.bench = bench
        self.wl = bench.wl
        self.dir = os.path.join(bench.workdir, self.name)
        self.a_dir = os.path.join(self.dir, "A")
        self.b_dir = os.path.join(self.dir, "B")
        self.stage = os.path.join(self.dir, "stage")
        os.makedirs(self.stage)
        self.res = {"notes": [], "bytes": {}}

    def trigger(self, rel):
        """Called right after a change on A (Syncthing: ask for a scan; its watcher waits 10 s)."""

    def run(self):
        wl, res = self.wl, self.res
        big_a, big_b = os.path.join(self.a_dir, "big.bin"), os.path.join(self.b_dir, "big.bin")
        self.setup_w1()
        quiesce()
        log(f"{self.name}: W1 ({wl.files} files)")
        t0 = time.perf_counter()
        self.start_w1()
        res["w1"] = wait_tree(self.b_dir, wl, W1_TIMEOUT) - t0
        log(f"{self.name}: W1 {res['w1']:.2f} s")
        self.settle()

        log(f"{self.name}: W2 ({wl.big_bytes >> 20} MiB file)")
        shutil.copyfile(wl.big["w2"], os.path.join(self.stage, "big.bin"))
        quiesce()
        before = self.counters()
        t0 = time.perf_counter()
        os.rename(os.path.join(self.stage, "big.bin"), big_a)
        self.trigger("big.bin")
        res["w2"] = wait_file(big_b, wl.sha["w2"], wl.size["w2"], BIG_TIMEOUT) - t0
        log(f"{self.name}: W2 {res['w2']:.2f} s")
        self.settle()
        res["bytes"]["w2"] = self.bytes_between(before, self.counters())

        log(f"{self.name}: W3 (1 MiB overwritten in the middle)")
        quiesce()
        before = self.counters()
        t0 = time.perf_counter()
        fd = os.open(big_a, os.O_WRONLY)
        try:
            os.pwrite(fd, wl.patch, wl.patch_offset)
        finally:
            os.close(fd)
        self.trigger("big.bin")
        res["w3"] = wait_file(big_b, wl.sha["w3"], wl.size["w3"], BIG_TIMEOUT) - t0
        self.settle()
        res["bytes"]["w3"] = self.bytes_between(before, self.counters())
        log(f"{self.name}: W3 {res['w3']:.2f} s, {mib(res['bytes']['w3']['wire']):.2f} MiB")

        log(f"{self.name}: W5 (1 byte inserted at the start)")
        shutil.copyfile(wl.big["w5"], os.path.join(self.stage, "big.bin"))
        quiesce()
        before = self.counters()
        t0 = time.perf_counter()
        os.rename(os.path.join(self.stage, "big.bin"), big_a)
        self.trigger("big.bin")
        res["w5"] = wait_file(big_b, wl.sha["w5"], wl.size["w5"], BIG_TIMEOUT) - t0
        self.settle()
        res["bytes"]["w5"] = self.bytes_between(before, self.counters())
        log(f"{self.name}: W5 {res['w5']:.2f} s, {res['bytes']['w5']['wire'] / 1024:.0f} KiB")

        log(f"{self.name}: W4 ({W4_REPEATS} small files, watchers only)")
        rng = random.Random(4)
        lat = []
        for i in range(W4_REPEATS):
            content = f"small file {i}\n".encode() + rng.randbytes(SMALL_BYTES - 13)
            rel = f"small-{i}.txt"
            t0 = time.perf_counter()
            with open(os.path.join(self.a_dir, rel), "wb") as f:
                f.write(content)
            lat.append(wait_small(os.path.join(self.b_dir, rel), content, W4_TIMEOUT) - t0)
            log(f"{self.name}: W4 #{i + 1}: {lat[-1] * 1000:.0f} ms")
            time.sleep(0.5)
        res["w4_all"] = lat
        res["w4"] = statistics.median(lat)
        # The trees must still be identical at the end (both ways).
        self.settle()
        a, b = tree_of(self.a_dir), tree_of(self.b_dir)
        if a != b:
            diff = sorted(set(a.items()) ^ set(b.items()))[:5]
            raise BenchError(f"{self.name}: A and B differ at the end: {diff}")
        res["rss"] = self.rss()

    def bytes_between(self, before, after):
        out = {"wire": tcp_delta(before["tcp"], after["tcp"])}
        for k, v in after.items():
            if k != "tcp":
                out[k] = v - before.get(k, 0)
        return out


class Meshsync(FolderTool):
    name = "meshsync"

    def __init__(self, bench):
        super().__init__(bench)
        self.procs = {}
        self.apis = {}
        self.homes = {k: os.path.join(self.dir, f"home-{k}") for k in "AB"}
        self.peer_ids = {}
        self.token = None

    def cli(self, node, *args):
        env = dict(os.environ, RUST_LOG="warn")
        env.pop("MESHSYNC_HOME", None)
        p = subprocess.run([self.bench.binary, "--home", self.homes[node], *args],
                           capture_output=True, text=True, env=env, timeout=120)
        if p.returncode != 0:
            raise BenchError(f"meshsync {node}: {' '.join(args)} failed: {p.stderr.strip()}")
        return p.stdout

    def start(self, node, peers=()):
        args = ["init", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--no-mdns"]
        for p in peers:
            args += ["--peer", p]
        self.peer_ids[node] = self.cli(node, *args).strip()
        env = dict(os.environ, RUST_LOG=self.bench.rust_log)
        env.pop("MESHSYNC_HOME", None)
        home = self.homes[node]
        self.procs[node] = self.bench.procs.start(
            [self.bench.binary, "--home", home, "run", "--no-mdns"],
            os.path.join(home, "daemon.log"), env=env)
        token = open(os.path.join(home, "api-token")).read().strip()

        def ready():
            if self.procs[node].poll() is not None:
                raise BenchError(f"meshsync {node} exited at start; see {home}/daemon.log")
            try:
                addr = open(os.path.join(home, "api.addr")).read().strip()
            except FileNotFoundError:
                return False
            if not addr:
                return False
            api = Api(int(addr.rsplit(":", 1)[1]), {"Authorization": f"Bearer {token}"})
            try:
                api.request("GET", "/v1/status")
            except (OSError, http.client.HTTPException, BenchError):
                api.close()
                return False
            self.apis[node] = api
            return True

        wait_until(f"meshsync {node} to answer", 60, ready, interval=0.01)

    def status(self, node):
        return self.apis[node].request("GET", "/v1/status")

    def share(self, node):
        for s in self.status(node)["shares"]:
            if s.get("kind") == "folder":
                return s
        return None

    def setup_w1(self):
        self.start("A")
        self.listen = self.status("A")["listen_addrs"][0]
        self.ports = {int(self.listen.split("/tcp/")[1].split("/")[0])}
        shutil.copytree(self.wl.w1_dir, self.a_dir)
        self.token = self.cli("A", "share", "create", "--folder", self.a_dir).strip()
        n = self.wl.files + DIRS

        def indexed():
            s = self.share("A")
            f = s and s.get("folder")
            return f and f["state"] == "idle" and f["local_entries"] >= n
        wait_until("meshsync A to index W1", 300, indexed, interval=0.1)
        self.start("B", peers=[self.listen])
        b_listen = self.status("B")["listen_addrs"][0]
        self.ports.add(int(b_listen.split("/tcp/")[1].split("/")[0]))
        wait_until("meshsync B to connect to A", 60,
                   lambda: any(p["peer_id"] == self.peer_ids["A"]
                               for p in self.status("B")["peers"]))

    def start_w1(self):
        self.cli("B", "share", "join", self.token, "--folder", self.b_dir)

    def settle(self):
        def idle():
            for node in "AB":
                s = self.share(node)
                f = s and s.get("folder")
                if not f or f["state"] != "idle" or f["needed_files"] or f["needed_bytes"]:
                    return False
            return True
        wait_until("meshsync to be idle", 120, idle, interval=0.05)
        time.sleep(SETTLE_S)

    def counters(self):
        out = {"tcp": tcp_bytes(self.ports)}
        for node in "AB":
            s = self.share(node)
            out[f"{node}.bytes_sent"] = s["bytes_sent"]
            out[f"{node}.bytes_received"] = s["bytes_received"]
            out[f"{node}.fetched_bytes"] = s["folder"]["fetched_bytes"]
            out[f"{node}.served_bytes"] = s["folder"]["served_bytes"]
        return out

    def rss(self):
        return {n: proc_field(p.pid, "VmHWM") for n, p in self.procs.items()}

    def stop(self):
        for node, proc in self.procs.items():
            if node in self.apis:
                self.apis[node].close()
            code = self.bench.procs.stop(proc)
            if code != 0:
                self.res["notes"].append(f"meshsync {node} exited with {code} at stop")


class Syncthing(FolderTool):
    name = "syncthing"
    FOLDER = "bench"

    def __init__(self, bench):
        super().__init__(bench)
        self.procs = {}
        self.homes = {k: os.path.join(self.dir, f"home-{k}") for k in "AB"}
        self.ids, self.apis, self.listen_ports, self.gui_ports = {}, {}, {}, {}

    def env(self):
        env = dict(os.environ, STNODEFAULTFOLDER="1", STNOUPGRADE="1", STNORESTART="1",
                   HOME=self.dir)
        for k in ("STTRACE", "STGUIADDRESS", "STGUIAPIKEY"):
            env.pop(k, None)
        return env

    def configure(self):
        for node in "AB":
            out = subprocess.run(
                ["syncthing", "generate", "--home", self.homes[node], "--no-default-folder",
                 "--skip-port-probing"],
                capture_output=True, text=True, env=self.env(), timeout=60)
            if out.returncode != 0:
                raise BenchError(f"syncthing generate failed: {out.stderr}")
            m = re.search(r"Device ID: (\S+)", out.stdout + out.stderr)
            self.ids[node] = m.group(1)
            self.listen_ports[node] = free_port()
            self.gui_ports[node] = free_port()
        for node in "AB":
            other = "B" if node == "A" else "A"
            path = os.path.join(self.homes[node], "config.xml")
            tree = ET.parse(path)
            root = tree.getroot()
            for f in root.findall("folder"):
                root.remove(f)
            key = f"bench-{node}-{random.getrandbits(64):016x}"
            gui = root.find("gui")
            gui.find("address").text = f"127.0.0.1:{self.gui_ports[node]}"
            gui.find("apikey").text = key
            opts = root.find("options")

            def setopt(tag, value):
                el = opts.find(tag)
                if el is None:
                    el = ET.SubElement(opts, tag)
                el.text = value
            setopt("listenAddress", f"tcp://127.0.0.1:{self.listen_ports[node]}")
            for tag, value in [
                ("globalAnnounceEnabled", "false"), ("localAnnounceEnabled", "false"),
                ("relaysEnabled", "false"), ("natEnabled", "false"), ("urAccepted", "-1"),
                ("autoUpgradeIntervalH", "0"), ("crashReportingEnabled", "false"),
                ("startBrowser", "false"), ("stunKeepaliveStartS", "0"),
                ("stunKeepaliveMinS", "0"), ("announceLANAddresses", "false"),
                # Syncthing nices itself by default; meshsync does not: compare like with like.
                ("setLowPriority", "false"), ("reconnectionIntervalS", "5"),
            ]:
                setopt(tag, value)
            own = root.find("device")
            dev = ET.fromstring(ET.tostring(own))
            dev.set("id", self.ids[other])
            dev.set("name", f"bench-{other}")
            dev.find("address").text = f"tcp://127.0.0.1:{self.listen_ports[other]}"
            own.set("name", f"bench-{node}")
            root.insert(list(root).index(own) + 1, dev)
            folder = ET.fromstring(ET.tostring(root.find("defaults").find("folder")))
            folder.set("id", self.FOLDER)
            folder.set("label", self.FOLDER)
            folder.set("path", self.a_dir if node == "A" else self.b_dir)
            folder.set("fsWatcherEnabled", "true")  # default delay (10 s) kept
            for d in folder.findall("device"):
                folder.remove(d)
            for n in "AB":
                d = ET.SubElement(folder, "device")
                d.set("id", self.ids[n])
                d.set("introducedBy", "")
            # B starts paused; W1 starts when it is unpaused.
            folder.find("paused").text = "true" if node == "B" else "false"
            root.insert(0, folder)
            tree.write(path)
            self.apis[node] = Api(self.gui_ports[node], {"X-API-Key": key})

    def start(self, node):
        self.procs[node] = self.bench.procs.start(
            ["syncthing", "serve", "--home", self.homes[node], "--no-browser", "--no-restart",
             "--no-upgrade", "--no-default-folder"],
            os.path.join(self.dir, f"syncthing-{node}.log"), env=self.env())

        def ready():
            if self.procs[node].poll() is not None:
                raise BenchError(f"syncthing {node} exited at start; see syncthing-{node}.log")
            try:
                return self.apis[node].request("GET", "/rest/system/status")["myID"]
            except (OSError, http.client.HTTPException, BenchError):
                self.apis[node].close()
                return False
        wait_until(f"syncthing {node} to answer", 60, ready, interval=0.05)

    def get(self, node, path):
        return self.apis[node].request("GET", path)

    def db_status(self, node):
        return self.get(node, f"/rest/db/status?folder={self.FOLDER}")

    def setup_w1(self):
        shutil.copytree(self.wl.w1_dir, self.a_dir)
        os.makedirs(os.path.join(self.a_dir, ".stfolder"))
        os.makedirs(os.path.join(self.b_dir, ".stfolder"))
        self.configure()
        self.ports = set(self.listen_ports.values())
        self.start("A")

        def indexed():
            s = self.db_status("A")
            return s["state"] == "idle" and s["localFiles"] >= self.wl.files
        wait_until("syncthing A to index W1", 300, indexed, interval=0.1)
        self.start("B")

        def connected():
            c = self.get("B", "/rest/system/connections")["connections"]
            return c.get(self.ids["A"], {}).get("connected")
        wait_until("syncthing B to connect to A", 120, connected, interval=0.05)

    def start_w1(self):
        self.apis["B"].request("PATCH", f"/rest/config/folders/{self.FOLDER}", {"paused": False})

    def trigger(self, rel):
        self.apis["A"].request("POST", f"/rest/db/scan?folder={self.FOLDER}&sub={rel}")

    def settle(self):
        def idle():
            for node in "AB":
                s = self.db_status(node)
                if s["state"] != "idle" or s["needFiles"] or s["needBytes"]:
                    return False
            return True
        wait_until("syncthing to be idle", 120, idle, interval=0.05)
        time.sleep(SETTLE_S)

    def counters(self):
        out = {"tcp": tcp_bytes(self.ports)}
        c = self.get("B", "/rest/system/connections")["connections"].get(self.ids["A"], {})
        out["B.inBytesTotal"] = c.get("inBytesTotal", 0)
        out["B.outBytesTotal"] = c.get("outBytesTotal", 0)
        return out

    def rss(self):
        out = {}
        for n, p in self.procs.items():
            # Report the largest process of the instance (`serve` may run a monitor + child).
            pids = descendants(p.pid)
            out[n] = max((proc_field(pid, "VmHWM") or 0) for pid in pids)
            if len(pids) > 1:
                self.res["notes"].append(f"syncthing {n} ran {len(pids)} processes")
        return out

    def stop(self):
        for node, proc in self.procs.items():
            self.apis[node].close()
            self.bench.procs.stop(proc)


class Rsync:
    """rsync pushes to an rsync daemon on 127.0.0.1 (no watcher: each workload is one push).

    `--modify-window=-1` makes its quick check compare mtimes to the nanosecond: W3 keeps the
    size and may fall in the same second as W2, and would otherwise be skipped as unchanged."""

    name = "rsync"

    def __init__(self, bench):
        self.bench, self.wl = bench, bench.wl
        self.dir = os.path.join(bench.workdir, "rsync")
        self.a_dir = os.path.join(self.dir, "A")
        self.b_dir = os.path.join(self.dir, "B")
        os.makedirs(self.b_dir)
        self.res = {"notes": [], "bytes": {}}
        self.proc = None
        self.sampler = TreeSampler()

    def push(self):
        url = f"rsync://127.0.0.1:{self.port}/bench/"
        t0 = time.perf_counter()
        p = subprocess.Popen(["rsync", "-a", "--fsync", "--stats", "--modify-window=-1", self.a_dir + "/", url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.bench.procs.record(p.pid)
        self.sampler.roots.add(p.pid)
        out, err = p.communicate(timeout=600)
        elapsed = time.perf_counter() - t0
        self.sampler.sample()
        self.sampler.roots.discard(p.pid)
        self.bench.procs.forget(p.pid)
        if p.returncode != 0:
            raise BenchError(f"rsync push failed ({p.returncode}): {err.strip()}")
        sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))
        recv = int(re.search(r"Total bytes received: ([\d,]+)", out).group(1).replace(",", ""))
        return elapsed, {"wire": sent + recv, "sent": sent, "received": recv}

    def run(self):
        wl, res = self.wl, self.res
        self.port = free_port()
        conf = os.path.join(self.dir, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"port = {self.port}\naddress = 127.0.0.1\nuse chroot = no\n"
                    f"pid file = {self.dir}/rsyncd.pid\nlog file = {self.dir}/rsyncd.log\n"
                    f"[bench]\npath = {self.b_dir}\nread only = false\n"
                    f"uid = {os.getuid()}\ngid = {os.getgid()}\n")
        self.proc = self.bench.procs.start(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}"],
            os.path.join(self.dir, "rsyncd.out"))
        self.sampler.roots.add(self.proc.pid)
        self.sampler.start()

        def listening():
            if self.proc.poll() is not None:
                raise BenchError("rsync daemon exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False
        wait_until("rsync daemon to listen", 30, listening, interval=0.05)
        shutil.copytree(wl.w1_dir, self.a_dir)
        log(f"rsync: W1 ({wl.files} files)")
        res["w1"], res["bytes"]["w1"] = self.push()
        if tree_of(self.b_dir) != wl.w1_tree:
            raise BenchError("rsync W1: B differs")
        big_a, big_b = os.path.join(self.a_dir, "big.bin"), os.path.join(self.b_dir, "big.bin")
        log("rsync: W2")
        shutil.copyfile(wl.big["w2"], big_a)
        res["w2"], res["bytes"]["w2"] = self.push()
        log("rsync: W3")
        fd = os.open(big_a, os.O_WRONLY)
        try:
            os.pwrite(fd, wl.patch, wl.patch_offset)
        finally:
            os.close(fd)
        res["w3"], res["bytes"]["w3"] = self.push()
        if sha256_file(big_b) != wl.sha["w3"]:
            raise BenchError("rsync W3: B differs")
        log("rsync: W5")
        shutil.copyfile(wl.big["w5"], big_a + ".new")
        os.rename(big_a + ".new", big_a)
        res["w5"], res["bytes"]["w5"] = self.push()
        if sha256_file(big_b) != wl.sha["w5"]:
            raise BenchError("rsync W5: B differs")
        self.sampler.stop()
        daemon = self.sampler.peak.get(self.proc.pid, ("rsync", 0))[1]
        forks = [v for pid, (n, v) in self.sampler.peak.items()
                 if pid != self.proc.pid and n == "rsync"]
        res["rss"] = {"daemon": daemon, "receivers+client": max(forks, default=0)}

    def stop(self):
        if not self.sampler.stop_ev.is_set() and self.sampler.thread.is_alive():
            self.sampler.stop()
        self.bench.procs.stop(self.proc)


# ---------------------------------------------------------------- report


def fmt_s(v):
    return "—" if v is None else (f"{v:.2f} s" if v >= 0.1 else f"{v * 1000:.0f} ms")


def fmt_bytes(v):
    if v is None:
        return "—"
    return f"{v / 2**20:.2f} MiB" if v >= 2**20 else f"{v / 1024:.0f} KiB"


def fmt_rss(r):
    if not r:
        return "—"
    return " / ".join(f"{v / 1024:.0f}" for v in r.values()) + " MiB"


FLOOR_WRITERS = 256  # files written at once in the small-file floor (meshsync's download limit)


def sync_file_range_fn():
    """libc's sync_file_range(2) (Python has no binding), or None where it is missing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_EVERY = 8 << 20  # as meshsync's writer (write::WRITEBACK_EVERY)


def write_big(src_path, dst_path, early_writeback):
    """Copies src to dst and fsyncs it; with early_writeback, starts the writeback of what was
    written every WRITEBACK_EVERY bytes (how meshsync writes), so the fsync has little left."""
    start_writeback = sync_file_range_fn() if early_writeback else None
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        while block := src.read(WRITEBACK_EVERY):
            dst.write(block)
            if start_writeback is not None:
                dst.flush()
                start_writeback(dst.fileno(), 0, 0, SYNC_FILE_RANGE_WRITE)
        dst.flush()
        os.fsync(dst.fileno())


def measure_floor(wl, workdir):
    """What fsync-safe writing alone costs on this file system, without network or hashing: the
    W2 file copied and fsynced (plainly, and with early writeback as meshsync writes), and W1's
    files each written to a temp name, fsynced, renamed and their directory fsynced,
    FLOOR_WRITERS at a time. Returns seconds for each."""
    root = os.path.join(workdir, "floor")
    os.makedirs(root)
    big = {"big_early": None}
    for key, early in (("big", False), ("big_early", True)):
        if early and sync_file_range_fn() is None:
            continue
        subprocess.run(["sync"])
        t0 = time.perf_counter()
        write_big(wl.big["w2"], os.path.join(root, "big"), early)
        big[key] = time.perf_counter() - t0
        os.unlink(os.path.join(root, "big"))
    subprocess.run(["sync"])
    jobs = [(d, n) for d, names in sorted(wl.w1_names.items()) for n in sorted(names)]
    for d in wl.w1_names:
        os.mkdir(os.path.join(root, d))
    data = bytes(FILE_BYTES)
    lock = threading.Lock()

    def writer():
        while True:
            with lock:
                if not jobs:
                    return
                d, name = jobs.pop()
            path = os.path.join(root, d, name)
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(path + ".tmp", path)
            dfd = os.open(os.path.join(root, d), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=writer) for _ in range(FLOOR_WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    small = time.perf_counter() - t0
    shutil.rmtree(root)
    subprocess.run(["sync"])
    return {**big, "small": small}


class Bench:
    def __init__(self, args):
        self.binary = os.path.abspath(args.binary)
        self.workdir = args.workdir
        self.tools = args.only.split(",") if args.only else ["meshsync", "syncthing", "rsync"]
        for t in self.tools:
            if t not in ("meshsync", "syncthing", "rsync"):
                raise BenchError(f"unknown tool {t}")
        self.rust_log = args.log
        self.procs = Procs(self.workdir)
        files, big = (1000, 64 << 20) if args.quick else (10_000, 256 << 20)
        self.wl = Workload(self.workdir, files, big)
        self.results = {}
        self.errors = {}
        self.floor = None

    def run(self):
        self.wl.generate()
        classes = {"meshsync": Meshsync, "syncthing": Syncthing, "rsync": Rsync}
        for name in self.tools:
            tool = classes[name](self)
            try:
                tool.run()
            except BenchError as e:
                log(f"{name} failed: {e}")
                self.errors[name] = str(e)
            finally:
                try:
                    tool.stop()
                except Exception as e:  # keep going: the trap kills what is left
                    log(f"stopping {name}: {e}")
            self.results[name] = tool.res
            # The next tool gets the disk to itself (homes and logs stay for --keep).
            shutil.rmtree(os.path.join(tool.dir, "A"), ignore_errors=True)
            shutil.rmtree(os.path.join(tool.dir, "B"), ignore_errors=True)
            subprocess.run(["sync"])
        # Last, so that its writes cannot slow the tools down.
        log("measuring the file system's floor (fsync-safe writes alone)")
        self.floor = measure_floor(self.wl, self.workdir)
        log(f"floor: {self.wl.big_bytes >> 20} MiB written and fsynced in "
            f"{fmt_s(self.floor['big'])} ({fmt_s(self.floor['big_early'])} with early writeback); "
            f"{self.wl.files:,} small files in "
            f"{self.floor['small']:.2f} s")

    def report(self):
        wl, R = self.wl, self.results
        cols = [t for t in ("meshsync", "syncthing", "rsync")]

        def cell(tool, key, kind):
            r = R.get(tool)
            if r is None:
                return "not run"
            if tool == "rsync" and key == "w4":
                return "n/a (no watcher)"
            if kind == "rss":
                return fmt_rss(r.get("rss"))
            if kind == "bytes":
                b = r.get("bytes", {}).get(key)
                return fmt_bytes(b["wire"]) if b else ("failed" if tool in self.errors else "—")
            v = r.get(key)
            if v is None:
                return "failed" if tool in self.errors else "—"
            return fmt_s(v)

        rows = [
            (f"W1 initial sync, {wl.files:,} × 4 KiB in {DIRS} dirs", "w1", "time", "w1"),
            (f"W2 one {wl.big_bytes >> 20} MiB file", "w2", "time", "w2"),
            ("W3 1 MiB overwritten in the middle: time", "w3", "time", "w3_time"),
            ("W3 bytes on the wire (both ways)", "w3", "bytes", "w3_bytes"),
            ("W5 1 byte inserted at the start: bytes on the wire", "w5", "bytes", "w5_bytes"),
            ("W4 small file A → B, watchers only (median of 5)", "w4", "time", "w4"),
            ("peak RSS (VmHWM) A / B", "rss", "rss", "rss"),
        ]
        quick = wl.files != 10_000
        lines = ["| workload | meshsync | Syncthing | rsync | target (meshsync) | met? |",
                 "|---|---|---|---|---|---|"]
        m = R.get("meshsync")
        for label, key, kind, tkey in rows:
            cells = [cell(t, key, kind) for t in cols]
            if tkey == "rss":
                target = "below Syncthing's"
                met = "—"
                if m and m.get("rss") and R.get("syncthing", {}).get("rss"):
                    met = "yes" if max(m["rss"].values()) < max(R["syncthing"]["rss"].values()) \
                        else "**no**"
            else:
                target, ok = TARGETS[tkey]
                met = "—"
                if m:
                    v = m.get("bytes", {}).get(key, {}).get("wire") if kind == "bytes" \
                        else m.get(key)
                    if v is not None:
                        met = "yes" if ok(v) else "**no**"
                        if quick and tkey in ("w1", "w2"):
                            met += " (quick size)"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} | {met} |")
        print("\n".join(lines))
        print()
        print("Notes:")
        print(f"- Files received are fsynced by every tool: meshsync fsyncs each file before the "
              f"rename and the directory after it; Syncthing with its default (disableFsync=false); "
              f"rsync with `--fsync`.")
        print("- W1 starts when B joins (meshsync `share join`; Syncthing: B's folder is unpaused "
              "over REST; rsync: the push starts) with A already indexed and B connected.")
        print("- Syncthing: after each change on A in W2, W3 and W5 a scan of the path is asked "
              "for over REST (its watcher waits 10 s, fsWatcherDelayS default); W4 uses only the "
              "watcher. meshsync never gets a trigger (its watcher only). rsync has no watcher: "
              "its times are the push's wall time.")
        print("- Bytes: TCP payload both ways on the peer connection(s) (`ss -ti`), from the change "
              f"until {SETTLE_S:.0f} s after both sides are idle; rsync: `--stats` sent + received.")
        print("- RSS: rsync `daemon / forked receiver or client` (largest of each).")
        if self.floor:
            print(f"- Floor of this file system, measured after the tools (no network, no hashing): "
                  f"{wl.big_bytes >> 20} MiB copied and fsynced in {fmt_s(self.floor['big'])} "
                  f"({fmt_s(self.floor['big_early'])} when its writeback is started every "
                  f"{WRITEBACK_EVERY >> 20} MiB, as meshsync writes); "
                  f"{wl.files:,} × 4 KiB each written to a temp name, fsynced, renamed and its "
                  f"directory fsynced, {FLOOR_WRITERS} at a time, in {fmt_s(self.floor['small'])}.")
        print()
        print("Details:")
        for t in cols:
            r = R.get(t)
            if r is None:
                continue
            print(f"- {t}:")
            if t in self.errors:
                print(f"  - **failed**: {self.errors[t]}")
            if "w4_all" in r:
                print("  - W4 latencies: " + ", ".join(f"{x * 1000:.0f} ms" for x in r["w4_all"]))
            for w in ("w5",):
                if r.get(w) is not None:
                    print(f"  - W5 time: {fmt_s(r[w])}")
            for w, b in r.get("bytes", {}).items():
                parts = ", ".join(f"{k} {v:,}" for k, v in b.items())
                print(f"  - {w.upper()} bytes: {parts}")
            if r.get("rss"):
                print("  - peak RSS KiB: " + ", ".join(f"{k} {v:,}" for k, v in r["rss"].items()))
            for n in r.get("notes", []):
                print(f"  - {n}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--log", default="meshsync=info,warn")
    ap.add_argument("--json")
    args = ap.parse_args()
    bench = Bench(args)
    stopping = {"n": 0}

    def on_signal(signum, _frame):
        stopping["n"] += 1
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.run()
    finally:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": bench.results, "errors": bench.errors,
                           "floor": bench.floor}, f, indent=1)
    bench.report()
    return 1 if bench.errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(1)
