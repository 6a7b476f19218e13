#!/usr/bin/env python3
"""Records benchmarks through real meshsync daemons (issue 3, benchmark section).

Called by scripts/bench-records.sh, which builds the release binary and runs the pure cost
table first; this runs the parts that need daemons and prints markdown:

  * reconciliation cost through real daemons (wire bytes from `status --json` sessions)
  * latency: put on A -> seen by the watch stream on B
  * throughput: 100,000 records put on A, replicated to two peers
  * fanout: a records share across 32 daemons; puts on one, seen on the 31 others' watch
    streams (p50/p99 over every put and peer), bytes per change per peer, idle CPU of all 32
  * scale: RSS and start-up time of a daemon holding n records; idle RSS

Every daemon runs with --no-mdns on 127.0.0.1 (port 0) in a fresh home under WORKDIR. Every
process started is recorded in WORKDIR/pids (one pid a line) and stopped on exit, also on
failure or a signal; the shell script's trap kills what is left and removes WORKDIR.
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

API_TIMEOUT = 600  # seconds for one API call (a 100k-record batch may take a while)
WAIT = 900  # longest any single wait may take


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def wait_until(what, timeout, check, interval=0.05):
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Api:
    """A small keep-alive client of one daemon's HTTP API."""

    def __init__(self, addr, token):
        host, port = addr.rsplit(":", 1)
        self.host, self.port, self.token = host, int(port), token
        self.conn = None

    def _conn(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=API_TIMEOUT)
        return self.conn

    def request(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            try:
                conn = self._conn()
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read()
                break
            except (http.client.HTTPException, ConnectionError, OSError):
                self.close()
                if attempt == 1:
                    raise
        if resp.status != 200:
            raise BenchError(f"{method} {path} answered {resp.status}: {text[:300]!r}")
        return json.loads(text) if text else None

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body):
        return self.request("POST", path, body)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Daemon:
    """One meshsync daemon with its own home under the work directory."""

    def __init__(self, bench, name, peers=()):
        self.bench = bench
        self.name = name
        self.home = os.path.join(bench.workdir, name)
        args = ["init", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--no-mdns"]
        for p in peers:
            args += ["--peer", p]
        out = self.cli(*args)
        self.peer_id = out.strip()
        self.proc = None
        self.api = None
        self.startup_s = None

    def cli(self, *args):
        env = dict(os.environ, RUST_LOG="warn")
        env.pop("MESHSYNC_HOME", None)
        p = subprocess.run(
            [self.bench.binary, "--home", self.home, *args],
            capture_output=True, text=True, env=env, timeout=120,
        )
        if p.returncode != 0:
            raise BenchError(f"{self.name}: meshsync {' '.join(args)} failed: {p.stderr.strip()}")
        return p.stdout

    @property
    def log_path(self):
        return os.path.join(self.home, "daemon.log")

    def start(self):
        assert self.proc is None
        try:
            os.remove(os.path.join(self.home, "api.addr"))
        except FileNotFoundError:
            pass
        env = dict(os.environ, RUST_LOG="meshsync=info,warn")
        env.pop("MESHSYNC_HOME", None)
        logf = open(self.log_path, "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [self.bench.binary, "--home", self.home, "run", "--no-mdns"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
        )
        logf.close()
        self.bench.record_pid(self.proc.pid)
        token = open(os.path.join(self.home, "api-token")).read().strip()

        def ready():
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                addr = open(os.path.join(self.home, "api.addr")).read().strip()
            except FileNotFoundError:
                return False
            if not addr:
                return False
            api = Api(addr, token)
            try:
                api.get("/v1/status")
            except (OSError, http.client.HTTPException, BenchError):
                api.close()
                return False
            self.api = api
            return True

        wait_until(f"{self.name} to answer status", WAIT, ready, interval=0.01)
        self.startup_s = time.monotonic() - started
        return self.startup_s

    def stop(self):
        if self.proc is None:
            return True
        if self.api:
            self.api.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop within 60 s of SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait()
            code = None
        self.bench.forget_pid(self.proc.pid)
        self.proc = None
        self.api = None
        if code != 0:
            self.bench.unclean.append(f"{self.name} (exit {code})")
        return code == 0

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def hwm_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    def status(self):
        return self.api.get("/v1/status")

    def share(self, name="data"):
        for s in self.api.get("/v1/shares"):
            if s["name"] == name:
                return s
        raise BenchError(f"{self.name} has no share {name}")

    def listen_addr(self):
        return self.status()["listen_addrs"][0]

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except FileNotFoundError:
            return ""

    def db_bytes(self):
        total = 0
        for dirpath, _, files in os.walk(self.home):
            for name in files:
                if name.endswith(".redb"):
                    total += os.path.getsize(os.path.join(dirpath, name))
        return total

    def store_opened_line(self):
        found = None
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if "store opened" in line:
                        found = line.strip()
        except FileNotFoundError:
            pass
        if found:
            return found[found.index("store opened"):]
        return None


# Records per batch call. The API allows 100,000 (MAX_BATCH_RECORDS), but the daemon refuses
# bodies over axum's default 2 MB limit with 413 (MAX_BODY_BYTES is defined but not applied; see
# the report), so 100,000 records of ~68 JSON bytes do not fit in one call: 20,000 do (1.4 MB).
BATCH_RECORDS = 20_000


def per_record(hold, table):
    """A table's pages per record held, with its data in parentheses, for the hold table."""
    t = hold["store_tables"].get(table)
    if t is None:
        return f"{table} -"
    return f"{table} {t['bytes'] / hold['n']:.0f} B, data {t['data_bytes'] / hold['n']:.0f} B"


def put_batches(api, n, start=0, prefix="key-", value_fn=None, batch=BATCH_RECORDS):
    """Puts keys prefix%08d for i in [start, start+n) in batches; returns seconds taken."""
    value_fn = value_fn or (lambda i: f"value-{i:08d}-" + "x" * 16)
    t0 = time.monotonic()
    i = start
    while i < start + n:
        m = min(batch, start + n - i)
        records = [{"key": f"{prefix}{j:08d}", "value": value_fn(j)} for j in range(i, i + m)]
        body = {"records": records}
        api.post("/v1/kv/data/batch", body)
        i += m
    return time.monotonic() - t0


class Bench:
    def __init__(self, args):
        self.binary = os.path.abspath(args.binary)
        self.workdir = args.workdir
        self.quick = args.quick
        self.daemons = []
        self.pidfile = os.path.join(self.workdir, "pids")
        self.results = {}
        self.unclean = []
        self.pure = None
        self.pure_md = None
        if args.pure_md:
            with open(args.pure_md) as f:
                self.pure_md = f.read()
        if args.pure_json:
            with open(args.pure_json) as f:
                self.pure = json.load(f)

    # ---- process book-keeping ----

    def record_pid(self, pid):
        with open(self.pidfile, "a") as f:
            f.write(f"{pid}\n")

    def forget_pid(self, pid):
        try:
            with open(self.pidfile) as f:
                pids = [l.strip() for l in f if l.strip() and l.strip() != str(pid)]
            with open(self.pidfile, "w") as f:
                f.write("".join(p + "\n" for p in pids))
        except FileNotFoundError:
            pass

    def daemon(self, name, peers=()):
        d = Daemon(self, name, peers)
        self.daemons.append(d)
        return d

    def stop_all(self):
        for d in self.daemons:
            try:
                d.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {d.name}: {e}")

    def retire(self, *daemons):
        """Stops daemons and removes their homes (a 10^6-record home is a few hundred MB)."""
        for d in daemons:
            d.stop()
            subprocess.run(["rm", "-rf", d.home])
            self.daemons.remove(d)

    # ---- helpers ----

    def pair(self, prefix):
        """A creates share `data`, B joins it; returns (A, B) once they are members."""
        a = self.daemon(f"{prefix}-a")
        a.start()
        b = self.daemon(f"{prefix}-b")
        b.start()
        token = a.cli("share", "create", "--records", "data").strip()
        b.cli("share", "join", token, "--records", "data")
        wait_until(f"{b.name} to be a member of {a.name}'s share", 60,
                   lambda: b.peer_id in a.share()["members"] and a.peer_id in b.share()["members"])
        return a, b, token

    # ---- 6. idle RSS ----

    def idle_rss(self):
        log("idle RSS of a fresh daemon")
        d = self.daemon("idle")
        startup = d.start()
        time.sleep(2)
        rss = d.rss_kib()
        self.results["idle"] = {"rss_kib": rss, "startup_s": startup}
        self.retire(d)

    # ---- 3. latency ----

    def latency(self, count=250, spacing=0.02):
        log(f"latency: {count} puts on A, {spacing * 1000:.0f} ms apart, watched on B")
        a, b, _ = self.pair("lat")
        seen = {}
        stream_ready = threading.Event()
        stop = threading.Event()
        errors = []
        addr = open(os.path.join(b.home, "api.addr")).read().strip()
        token = open(os.path.join(b.home, "api-token")).read().strip()
        host, port = addr.rsplit(":", 1)

        holder = {}

        def watcher():
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                holder["conn"] = conn
                conn.request("GET", "/v1/kv/data/watch?prefix=lat-",
                             headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                if resp.status != 200:
                    errors.append(f"watch answered {resp.status}")
                    stream_ready.set()
                    return
                stream_ready.set()
                read_watch_stream(resp, stop, lambda key, now: seen.setdefault(key, now),
                                  errors, b.name)
                conn.close()
            except Exception as e:  # reported below
                if not stop.is_set():
                    errors.append(f"watch failed: {e!r}")
                stream_ready.set()

        t = threading.Thread(target=watcher, daemon=True)
        t.start()
        stream_ready.wait(30)
        time.sleep(0.3)  # let the subscription settle before the first put
        sent = {}
        put_rtt = []
        warmup = 5
        next_at = time.perf_counter()
        for i in range(count + warmup):
            next_at += spacing
            key = f"lat-{i:05d}"
            t0 = time.perf_counter()
            a.api.post("/v1/kv/data/put", {"key": key, "value": f"v{i}"})
            t1 = time.perf_counter()
            if i >= warmup:
                sent[key] = t0
                put_rtt.append(t1 - t0)
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        try:
            wait_until("every put to reach B's watch stream", 30,
                       lambda: all(k in seen for k in sent))
        except BenchError:
            pass
        stop.set()
        # Close the watch stream before stopping the daemons: an open watch stream keeps the
        # daemon from shutting down on SIGTERM (see the report).
        conn = holder.get("conn")
        if conn is not None and conn.sock is not None:
            import socket
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        t.join(5)
        missing = [k for k in sent if k not in seen]
        lat = sorted((seen[k] - sent[k]) * 1000 for k in sent if k in seen)
        if not lat:
            raise BenchError(f"no put reached B's watch stream: {errors}")

        def pct(xs, p):
            return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

        self.results["latency"] = {
            "puts": len(sent),
            "seen": len(lat),
            "missing": len(missing),
            "median_ms": statistics.median(lat),
            "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99),
            "max_ms": lat[-1],
            "min_ms": lat[0],
            "put_rtt_median_ms": statistics.median(put_rtt) * 1000,
            "put_rtt_p99_ms": pct(sorted(put_rtt), 99) * 1000,
            "errors": errors[:5],
        }
        self.retire(a, b)

    # ---- 5. fan-out to 32 daemons ----

    def fanout(self, n=32, count=60, spacing=0.25, idle_s=30, settle_s=30):
        log(f"fanout: {n} daemons in one records share; {count} puts on the first, "
            f"{spacing * 1000:.0f} ms apart, watched on the {n - 1} others")
        first = self.daemon("fan-00")
        first.start()
        addr = first.listen_addr()
        nodes = [first]
        for i in range(1, n):
            d = self.daemon(f"fan-{i:02d}", peers=[addr])
            d.start()
            nodes.append(d)
        token = first.cli("share", "create", "--records", "data").strip()
        for d in nodes[1:]:
            d.cli("share", "join", token, "--records", "data")
        started = time.monotonic()
        wait_until(f"all {n} daemons to see the {n - 1} others as members", 300,
                   lambda: all(len(d.share()["members"]) >= n - 1 for d in nodes), interval=0.5)
        members_s = time.monotonic() - started
        # Connections are made as members are learnt; let them and the first sessions settle.
        time.sleep(3)

        seen = {}
        errors = []
        stop = threading.Event()
        conns = []
        ready = threading.Semaphore(0)

        def watcher(d):
            addr = open(os.path.join(d.home, "api.addr")).read().strip()
            token = open(os.path.join(d.home, "api-token")).read().strip()
            host, port = addr.rsplit(":", 1)
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                conns.append(conn)
                conn.request("GET", "/v1/kv/data/watch?prefix=fan-",
                             headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                ready.release()
                if resp.status != 200:
                    errors.append(f"{d.name}: watch answered {resp.status}")
                    return
                read_watch_stream(resp, stop,
                                  lambda key, now: seen.setdefault((d.name, key), now),
                                  errors, d.name)
            except Exception as e:  # reported below
                if not stop.is_set():
                    errors.append(f"{d.name}: watch failed: {e!r}")
                ready.release()

        threads = [threading.Thread(target=watcher, args=(d,), daemon=True) for d in nodes[1:]]
        for t in threads:
            t.start()
        for _ in threads:
            ready.acquire(timeout=30)
        time.sleep(0.5)

        def share_bytes():
            total = 0
            for d in nodes:
                sh = d.share()
                total += sh["bytes_sent"]
            return total

        bytes_before = share_bytes()
        sent = {}
        next_at = time.perf_counter()
        for i in range(count):
            next_at += spacing
            key = f"fan-{i:05d}"
            sent[key] = time.perf_counter()
            first.api.post("/v1/kv/data/put", {"key": key, "value": f"value {i}"})
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        others = [d.name for d in nodes[1:]]
        try:
            wait_until("every put on every other daemon's watch stream", 60,
                       lambda: all((o, k) in seen for o in others for k in sent))
        except BenchError:
            pass
        # Gossip and sessions triggered by the puts end within a few seconds.
        time.sleep(3)
        bytes_after = share_bytes()
        stop.set()
        import socket
        for conn in conns:
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in threads:
            t.join(5)

        lat = sorted((seen[(o, k)] - sent[k]) * 1000 for o in others for k in sent
                     if (o, k) in seen)
        missing = count * len(others) - len(lat)
        if not lat:
            raise BenchError(f"no put reached any watch stream: {errors[:5]}")

        def pct(xs, p):
            return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

        # Idle: every daemon's CPU time over `idle_s` seconds, from /proc, once the work of the
        # puts has died down (`settle_s` after the last one: the announcements' tail, sessions
        # and allocator trims); the settling time itself is reported as "after the puts".
        tick = os.sysconf("SC_CLK_TCK")

        def cpu_ticks():
            total = 0
            for d in nodes:
                with open(f"/proc/{d.proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            return total

        a0, s0 = cpu_ticks(), time.monotonic()
        time.sleep(settle_s)
        log(f"fanout: measuring idle CPU of the {n} daemons for {idle_s} s")
        c0, t0 = cpu_ticks(), time.monotonic()
        # Sampled by the minute (the last part shorter): periodic work (DHT upkeep, identify,
        # anti-entropy backing off) shows as minutes above the rest.
        minutes, last = [], (c0, t0)
        while time.monotonic() < t0 + idle_s:
            time.sleep(min(60, t0 + idle_s - time.monotonic()))
            now = (cpu_ticks(), time.monotonic())
            minutes.append(round(100 * (now[0] - last[0]) / tick / (now[1] - last[1]), 2))
            last = now
        c1, t1 = last
        if len(minutes) > 1:
            log(f"fanout: idle CPU by minute, % of one core: {minutes}")
        rss = sorted(d.rss_kib() for d in nodes)
        self.results["fanout"] = {
            "daemons": n,
            "puts": count,
            "members_s": members_s,
            "deliveries": len(lat),
            "missing": missing,
            "median_ms": statistics.median(lat),
            "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99),
            "max_ms": lat[-1],
            "bytes_per_change_per_peer": (bytes_after - bytes_before) / (count * len(others)),
            "bytes_during_puts": bytes_after - bytes_before,
            "idle_cpu_percent": 100 * (c1 - c0) / tick / (t1 - t0),
            "idle_s": t1 - t0,
            "idle_by_minute_percent": minutes,
            "settle_cpu_percent": 100 * (c0 - a0) / tick / (t0 - s0),
            "settle_s": t0 - s0,
            "rss_median_kib": rss[len(rss) // 2],
            "rss_total_kib": sum(rss),
            "errors": errors[:5],
        }
        self.retire(*nodes)

    # ---- 4. throughput ----

    def throughput(self, n=100_000):
        log(f"throughput: {n} records put on A, replicated to B and C")
        a, b, token = self.pair("tput")
        c = self.daemon("tput-c")
        c.start()
        c.cli("share", "join", token, "--records", "data")
        wait_until("C to be a member", 60,
                   lambda: c.peer_id in a.share()["members"] and a.peer_id in c.share()["members"])
        # Fully connected mesh: wait until B and C see each other as members too (through the
        # token's addresses they both dial A; B and C find each other through the DHT).
        try:
            wait_until("B and C to be members of each other", 20,
                       lambda: c.peer_id in b.share()["members"])
            mesh = "full (B and C also members of each other)"
        except BenchError:
            mesh = "star (B and C only know A)"
        t0 = time.monotonic()
        put_s = put_batches(a.api, n, prefix="tp-")
        done = {}

        def both():
            now = time.monotonic()
            for d in (b, c):
                if d.name not in done and d.share()["entries"] >= n:
                    done[d.name] = now - t0
            return len(done) == 2

        wait_until("both peers to hold every record", WAIT, both, interval=0.05)
        total = max(done.values())
        # Check contents, not just counts: the listings must be identical.
        la = a.api.get("/v1/kv/data/list?prefix=tp-")
        lb = b.api.get("/v1/kv/data/list?prefix=tp-")
        lc = c.api.get("/v1/kv/data/list?prefix=tp-")
        identical = la == lb == lc and len(la) == n
        sessions = {d.name: d.status()["sessions"] for d in (a, b, c)}
        self.results["throughput"] = {
            "n": n,
            "mesh": mesh,
            "put_s": put_s,
            "b_s": done[b.name],
            "c_s": done[c.name],
            "total_s": total,
            "records_per_s": n / total,
            "identical": identical,
            "rss_kib": {d.name: d.rss_kib() for d in (a, b, c)},
            "sessions": sessions,
        }
        self.retire(a, b, c)

    # ---- 2 and 5. reconciliation through daemons; scale ----

    def reconcile(self, n, diffs=(0, 1, 100, 10_000)):
        log(f"reconcile through daemons: n = {n}")
        a, b, _ = self.pair(f"rec{n}")
        t0 = time.monotonic()
        load_s = put_batches(a.api, n, prefix="key-")
        log(f"  loaded {n} records on A in {load_s:.1f} s; waiting for B's initial sync")
        t1 = time.monotonic()
        wait_until("B's initial sync", WAIT,
                   lambda: b.share()["root"] == a.share()["root"], interval=0.1)
        initial_sync_s = time.monotonic() - t1
        log(f"  initial sync {initial_sync_s:.1f} s")
        settle(b)
        res = {
            "n": n,
            "load_s": load_s,
            "load_rate": n / load_s,
            "initial_sync_s": initial_sync_s,
            "initial_sessions": {"A": a.status()["sessions"], "B": b.status()["sessions"]},
            "rss_a_loaded_kib": a.rss_kib(),
            "hwm_a_kib": a.hwm_kib(),
            "rss_b_synced_kib": b.rss_kib(),
            "hwm_b_kib": b.hwm_kib(),
            "db_a_bytes": a.db_bytes(),
            "db_b_bytes": b.db_bytes(),
            "rows": [],
        }
        version = 0
        for d in diffs:
            if d > n:
                continue
            version += 1
            b.stop()
            if d:
                v = version
                # d existing keys spread over the key space get a new value.
                step = max(1, n // d)
                keys = [(i * step) % n for i in range(d)]
                records = [{"key": f"key-{k:08d}", "value": f"changed-{v}-{k}"} for k in keys]
                for i in range(0, len(records), BATCH_RECORDS):
                    a.api.post("/v1/kv/data/batch", {"records": records[i:i + BATCH_RECORDS]})
            restart_ms = int(time.time() * 1000)
            startup = b.start()
            opened = b.store_opened_line()
            t_start = time.monotonic()
            a_root = a.share()["root"]
            wait_until(f"B to converge after {d} changes", WAIT,
                       lambda: b.share()["root"] == a_root, interval=0.05)
            converge_s = time.monotonic() - t_start
            sessions = settle(b, a, since_ms=restart_ms)
            rss_b = b.rss_kib()
            res["rows"].append({
                "d": d,
                "startup_s": startup,
                "store_opened": opened,
                "converge_s": converge_s,
                "rss_b_kib": rss_b,
                "sessions": sessions,
            })
            log(f"  d = {d}: converged {converge_s:.2f} s after B answered; "
                f"{len(sessions)} session(s)")
        self.results.setdefault("reconcile", []).append(res)
        self.retire(a, b)

    # ---- 7. one daemon holding many records ----

    def hold(self, n):
        """One daemon loads n records into a records share through the API, then restarts:
        memory while loading, after it, and after the restart; start-up; the store's size."""
        log(f"hold: one daemon loads {n} records, then restarts")
        d = self.daemon(f"hold-{n}")
        d.start()
        d.cli("share", "create", "--records", "data")
        peak_rss = 0
        load_s = 0.0
        step = 1_000_000
        for start in range(0, n, step):
            m = min(step, n - start)
            load_s += put_batches(d.api, m, start=start)
            peak_rss = max(peak_rss, d.rss_kib())
            log(f"  {start + m} records in {load_s:.0f} s; RSS {d.rss_kib() / 1024:.0f} MiB")
        res = {
            "n": n,
            "load_s": load_s,
            "load_rate": n / load_s,
            "rss_loaded_kib": d.rss_kib(),
            "hwm_loading_kib": d.hwm_kib(),
        }
        time.sleep(30)
        res["rss_loaded_idle_kib"] = d.rss_kib()
        time.sleep(30)
        res["rss_loaded_60s_kib"] = d.rss_kib()
        # Where the store's bytes go (GET /v1/store reads every page).
        usage = d.api.get("/v1/store")
        res["store_tables_bytes"] = usage["tables_bytes"]
        res["store_tables"] = {
            t["name"]: {"rows": t["entries"], "data_bytes": t["stored_bytes"],
                        "bytes": t["stored_bytes"] + t["overhead_bytes"] + t["fragmented_bytes"]}
            for t in usage["tables"] if t["entries"]
        }
        d.stop()
        res["startup_s"] = d.start()
        res["store_opened"] = d.store_opened_line()
        res["rss_started_kib"] = d.rss_kib()
        time.sleep(20)
        res["rss_started_20s_kib"] = d.rss_kib()
        res["hwm_started_kib"] = d.hwm_kib()
        res["count"] = d.share()["entries"] if "entries" in d.share() else None
        res["db_bytes"] = d.db_bytes()
        log(f"  restarted: API in {res['startup_s']:.2f} s, RSS {res['rss_started_20s_kib'] / 1024:.0f} "
            f"MiB after 20 s (peak {res['hwm_started_kib'] / 1024:.0f}); store "
            f"{res['db_bytes'] / n:.0f} B per record")
        self.results.setdefault("hold", []).append(res)
        self.retire(d)

    # ---- output ----

    def markdown(self):
        out = []
        r = self.results
        if "hold" in r:
            out.append("### One daemon holding n records (loaded through the API, 20,000 a call)")
            out.append("")
            out.append("| n | load | RSS loaded / peak / 30 s / 60 s later | restart: API after | "
                       "RSS at start / +20 s / peak | store per record: file / in tables "
                       "(records, index) |")
            out.append("|---:|---:|---|---:|---|---:|")
            for h in r["hold"]:
                out.append(
                    f"| {h['n']:,} | {h['load_s']:.0f} s ({h['load_rate']:,.0f}/s) | "
                    f"{h['rss_loaded_kib'] / 1024:.0f} / {h['hwm_loading_kib'] / 1024:.0f} / "
                    f"{h['rss_loaded_idle_kib'] / 1024:.0f} / {h['rss_loaded_60s_kib'] / 1024:.0f} MiB | "
                    f"{h['startup_s']:.2f} s | "
                    f"{h['rss_started_kib'] / 1024:.0f} / {h['rss_started_20s_kib'] / 1024:.0f} / "
                    f"{h['hwm_started_kib'] / 1024:.0f} MiB | {h['db_bytes'] / h['n']:.0f} / "
                    f"{h['store_tables_bytes'] / h['n']:.0f} B "
                    f"({per_record(h, 'records')}, {per_record(h, 'index')}) |")
            out.append("")
        if "reconcile" in r:
            out.append("### Reconciliation through real daemons (wire bytes: frames of the "
                       "request-response protocol, before Noise encryption)")
            out.append("")
            out.append("B is stopped, A changes the values of `d` existing keys, B restarts. "
                       "Every session either node ran after B's restart is listed (the one "
                       "that did the work has need/offer = d); `rounds` = reconciliation round "
                       "trips, `round trips` = all (pull of entries and pushes included).")
            out.append("")
            out.append("| n | d | initiator | rounds | round trips | bytes sent | bytes received "
                       "| total | need | offer | merged | pushed | session ms | B start-up | "
                       "converged after |")
            out.append("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for rec in r["reconcile"]:
                for row in rec["rows"]:
                    sessions = row["sessions"] or [None]
                    for s in sessions:
                        if s is None:
                            out.append(f"| {rec['n']} | {row['d']} | (no session) | | | | | | | "
                                       f"| | | | {row['startup_s']:.2f} s | "
                                       f"{row['converge_s']:.2f} s |")
                            continue
                        err = f" ERROR: {s['error']}" if s.get("error") else ""
                        out.append(
                            f"| {rec['n']} | {row['d']} | {s['node']} → peer{err} | "
                            f"{s['rounds']} | {s['round_trips']} | {s['bytes_sent']} | "
                            f"{s['bytes_received']} | {s['bytes_sent'] + s['bytes_received']} | "
                            f"{s['need']} | {s['offer']} | {s['merged']} | {s['pushed']} | "
                            f"{s['duration_ms']:.1f} | {row['startup_s']:.2f} s | "
                            f"{row['converge_s']:.2f} s |")
            out.append("")
            for rec in r["reconcile"]:
                init = rec["initial_sessions"]
                allb = init["B"] + init["A"]
                work = [s for s in allb if s["need"] + s["offer"] > 0]
                desc = "; ".join(
                    f"{s['rounds']} rounds / {s['round_trips']} round trips, "
                    f"{s['bytes_sent'] + s['bytes_received']} B, need {s['need']}, offer {s['offer']}, "
                    f"{s['duration_ms'] / 1000:.1f} s" + (f", error {s['error']}" if s.get('error') else "")
                    for s in work[:4])
                out.append(f"- n = {rec['n']}: loading A through the batch API took "
                           f"{rec['load_s']:.1f} s ({rec['load_rate']:.0f} records/s); B's "
                           f"initial sync from empty took {rec['initial_sync_s']:.1f} s "
                           f"(sessions: {desc or 'none recorded'}).")
            out.append("")
        if "latency" in r:
            l = r["latency"]
            out.append("### Latency, put on A → line on B's watch stream")
            out.append("")
            out.append("| puts | seen | median | p90 | p99 | max | min | put call (median / p99) |")
            out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
            out.append(f"| {l['puts']} | {l['seen']} | {l['median_ms']:.2f} ms | "
                       f"{l['p90_ms']:.2f} ms | {l['p99_ms']:.2f} ms | {l['max_ms']:.2f} ms | "
                       f"{l['min_ms']:.2f} ms | {l['put_rtt_median_ms']:.2f} / "
                       f"{l['put_rtt_p99_ms']:.2f} ms |")
            if l["errors"]:
                out.append("")
                out.append(f"Watch stream errors: {l['errors']}")
            out.append("")
        if "fanout" in r:
            f = r["fanout"]
            out.append(f"### Fan-out, put on one of {f['daemons']} daemons → line on each of the "
                       f"{f['daemons'] - 1} others' watch streams")
            out.append("")
            out.append("| puts | deliveries (missing) | median | p90 | p99 | max | bytes per change "
                       "per peer (all daemons' share traffic) | CPU of all daemons after the puts | idle CPU, all daemons, after that | RSS median "
                       "/ total | members known after |")
            out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            out.append(f"| {f['puts']} | {f['deliveries']} ({f['missing']}) | "
                       f"{f['median_ms']:.1f} ms | {f['p90_ms']:.1f} ms | {f['p99_ms']:.1f} ms | "
                       f"{f['max_ms']:.1f} ms | {f['bytes_per_change_per_peer']:.0f} B | "
                       f"{f['settle_cpu_percent']:.2f} % of one core over {f['settle_s']:.0f} s | "
                       f"{f['idle_cpu_percent']:.2f} % of one core over {f['idle_s']:.0f} s | "
                       f"{f['rss_median_kib'] / 1024:.1f} / {f['rss_total_kib'] / 1024:.0f} MiB | "
                       f"{f['members_s']:.1f} s |")
            if f["errors"]:
                out.append("")
                out.append(f"Watch stream errors: {f['errors']}")
            out.append("")
        if "throughput" in r:
            t = r["throughput"]
            out.append("### Throughput, 100,000 records put on A, replicated to B and C")
            out.append("")
            out.append("| records | mesh | batch put on A | B has all | C has all | records/s "
                       "(until both have all) | listings identical |")
            out.append("|---:|---|---:|---:|---:|---:|:---:|")
            out.append(f"| {t['n']} | {t['mesh']} | {t['put_s']:.2f} s | {t['b_s']:.2f} s | "
                       f"{t['c_s']:.2f} s | {t['records_per_s']:.0f} | "
                       f"{'yes' if t['identical'] else 'NO'} |")
            out.append("")
        out.append("### Memory and start-up")
        out.append("")
        out.append("| what | RSS (VmRSS) | peak (VmHWM) | start-up until `status` answers | store opened (daemon log) |")
        out.append("|---|---:|---:|---:|---|")
        if "idle" in r:
            out.append(f"| fresh daemon, idle 2 s, no shares | {r['idle']['rss_kib'] / 1024:.1f} MiB | | "
                       f"{r['idle']['startup_s'] * 1000:.0f} ms | |")
        if "throughput" in r:
            for name, kib in r["throughput"]["rss_kib"].items():
                out.append(f"| {name} after the throughput run (100k records) | "
                           f"{kib / 1024:.1f} MiB | | | |")
        for rec in r.get("reconcile", []):
            out.append(f"| A after loading {rec['n']} records (batch API) | "
                       f"{rec['rss_a_loaded_kib'] / 1024:.1f} MiB | {rec['hwm_a_kib'] / 1024:.1f} MiB | | |")
            out.append(f"| B after its initial sync of {rec['n']} records | "
                       f"{rec['rss_b_synced_kib'] / 1024:.1f} MiB | {rec['hwm_b_kib'] / 1024:.1f} MiB | | |")
            out.append(f"| (database files: A {rec['db_a_bytes'] / 2**20:.0f} MiB, "
                       f"B {rec['db_b_bytes'] / 2**20:.0f} MiB) | | | | |")
            for row in rec["rows"]:
                out.append(f"| B restarted with {rec['n']} records, after the d = {row['d']} session | "
                           f"{row['rss_b_kib'] / 1024:.1f} MiB | | {row['startup_s'] * 1000:.0f} ms | "
                           f"{row['store_opened'] or '?'} |")
        out.append("")
        if self.unclean:
            out.append(f"Daemons that did not exit cleanly on SIGTERM: {', '.join(self.unclean)}")
            out.append("")
        if self.pure_md:
            out = ["### Reconciliation cost, pure (in-process, every message CBOR-encoded as on "
                   "the wire; `examples/reconcile_costs.rs`)", "", self.pure_md.strip(), ""] + out
        out = self.targets() + out
        return "\n".join(out)

    def targets(self):
        """The issue's targets, each with what was measured and whether it is met."""
        rows = []

        def add(what, target, measured, met):
            verdict = "n/a" if met is None else ("**met**" if met else "**NOT met**")
            rows.append(f"| {what} | {target} | {measured} | {verdict} |")

        if self.pure:
            big = max(r["n"] for r in self.pure)
            for d, target, check in [
                (0, "1 round trip, < 200 B",
                 lambda r: r["total_rounds"] == 1 and r["bytes_sent"] + r["bytes_received"] < 200),
                (1, "≤ 5 round trips, ≤ 4 KiB",
                 lambda r: r["total_rounds"] <= 5 and r["bytes_sent"] + r["bytes_received"] <= 4096),
                (100, "≤ 64 KiB", lambda r: r["bytes_sent"] + r["bytes_received"] <= 65536),
            ]:
                r = next((r for r in self.pure if r["n"] == big and r["d"] == d), None)
                if r:
                    add(f"pure reconciliation, n = {big}, d = {d}", target,
                        f"{r['total_rounds']} round trips (pull included), "
                        f"{r['bytes_sent'] + r['bytes_received']} B", check(r) and r["exact"])
        for rec in self.results.get("reconcile", []):
            for row in rec["rows"]:
                d = row["d"]
                if d not in (0, 1, 100):
                    continue
                work = [s for s in row["sessions"] if s["need"] + s["offer"] > 0 or d == 0]
                if not work:
                    continue
                s0 = max(work, key=lambda s: s["bytes_sent"] + s["bytes_received"])
                b = s0["bytes_sent"] + s0["bytes_received"]
                total = sum(s["bytes_sent"] + s["bytes_received"] for s in row["sessions"])
                rt = s0["round_trips"]
                if d == 0:
                    target, met = "1 round trip, < 200 B", rt == 1 and b < 200
                elif d == 1:
                    target, met = "≤ 5 round trips, ≤ 4 KiB", rt <= 5 and b <= 4096
                else:
                    target, met = "≤ 64 KiB", b <= 65536
                add(f"through daemons (wire), n = {rec['n']}, d = {d}", target,
                    f"{rt} round trips ({s0['rounds']} reconciling), {b} B per session; "
                    f"{len(row['sessions'])} sessions ran, {total} B in all", met)
        if "latency" in self.results:
            l = self.results["latency"]
            add("latency put on A → watch on B", "median < 20 ms, p99 < 100 ms",
                f"median {l['median_ms']:.1f} ms, p99 {l['p99_ms']:.1f} ms ({l['seen']}/{l['puts']} seen)",
                l["median_ms"] < 20 and l["p99_ms"] < 100 and l["seen"] == l["puts"])
        if "fanout" in self.results:
            f = self.results["fanout"]
            add(f"fan-out put → {f['daemons'] - 1} peers' watch streams", "p99 ≤ 250 ms",
                f"median {f['median_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms "
                f"({f['deliveries']} of {f['deliveries'] + f['missing']} delivered)",
                f["p99_ms"] <= 250 and f["missing"] == 0)
            add(f"{f['daemons']} daemons idle", "≤ 2 % of one core in total",
                f"{f['idle_cpu_percent']:.2f} %", f["idle_cpu_percent"] <= 2)
        if "throughput" in self.results:
            t = self.results["throughput"]
            add("throughput 100k records to 2 peers", "≥ 20,000 records/s",
                f"{t['records_per_s']:.0f} records/s ({t['total_s']:.2f} s, put included)",
                t["records_per_s"] >= 20_000 and t["identical"])
        for rec in self.results.get("reconcile", []):
            ups = [row["startup_s"] for row in rec["rows"]]
            rss = [row["rss_b_kib"] / 1024 for row in rec["rows"]]
            add(f"daemon holding {rec['n']} records", "(report)",
                f"start-up {min(ups):.2f}–{max(ups):.2f} s; RSS after restart "
                f"{min(rss):.0f}–{max(rss):.0f} MiB, after initial sync "
                f"{rec['rss_b_synced_kib'] / 1024:.0f} MiB", None)
        if "idle" in self.results:
            add("idle daemon", "(report)", f"{self.results['idle']['rss_kib'] / 1024:.1f} MiB RSS", None)
        if not rows:
            return []
        return ["### Targets", "", "| what | target | measured | verdict |", "|---|---|---|---|",
                *rows, ""]


def read_watch_stream(resp, stop, on_key, errors, who):
    """Reads a `kv watch` stream line by line until `stop` is set or the stream ends, calling
    on_key(key, time it was read) for each line; lag notices go to `errors`."""
    while not stop.is_set():
        line = resp.readline()
        now = time.perf_counter()
        if not line:
            break
        try:
            view = json.loads(line)
        except ValueError:
            continue
        if "lagged" in view:
            errors.append(f"{who}: watch lagged: {view}")
            continue
        on_key(view["key"], now)


def settle(*daemons, since_ms=None, quiet=1.0, timeout=120):
    """Waits until the nodes' session lists stop changing for `quiet` seconds (and at least one
    session started after `since_ms` exists); returns those sessions, tagged with the node."""
    def snapshot():
        found = []
        for d in daemons:
            for s in d.status()["sessions"]:
                if since_ms is None or s["started_ms"] >= since_ms:
                    found.append(dict(s, node=d.name[-1].upper()))
        return found

    start = time.monotonic()
    last = snapshot()
    last_change = time.monotonic()
    while True:
        time.sleep(0.2)
        now = snapshot()
        if now != last:
            last, last_change = now, time.monotonic()
        enough = since_ms is None or len(now) >= 1
        if enough and time.monotonic() - last_change >= quiet:
            return sorted(now, key=lambda s: s["started_ms"])
        if time.monotonic() - start > timeout:
            return sorted(now, key=lambda s: s["started_ms"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--quick", action="store_true", help="skip the 10^6-record parts")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--fanout-settle", type=float, default=30,
                   help="seconds between the last fan-out put and the idle CPU measurement")
    p.add_argument("--fanout-idle", type=float, default=30,
                   help="seconds over which the fan-out's idle CPU is measured")
    p.add_argument("--pure-json", help="rows of the pure cost table (reconcile_costs --json)")
    p.add_argument("--pure-md", help="the pure cost table as markdown, printed with the rest")
    p.add_argument("--only",
                   help="comma-separated parts: idle,latency,throughput,fanout,reconcile,hold "
                        "(hold runs only when asked for)")
    p.add_argument("--hold", type=int, default=10_000_000,
                   help="records the hold part loads into one daemon")
    args = p.parse_args()
    bench = Bench(args)
    parts = (args.only or "idle,latency,throughput,fanout,reconcile").split(",")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    ok = False
    try:
        if "idle" in parts:
            bench.idle_rss()
        if "latency" in parts:
            bench.latency()
        if "throughput" in parts:
            bench.throughput()
        if "fanout" in parts:
            bench.fanout(settle_s=args.fanout_settle, idle_s=args.fanout_idle)
        if "reconcile" in parts:
            bench.reconcile(100_000)
            if not args.quick:
                bench.reconcile(1_000_000)
        if "hold" in parts:
            bench.hold(args.hold)
        ok = True
    except (BenchError, KeyboardInterrupt) as e:
        log(f"FAILED: {e}")
        for d in bench.daemons:
            log(f"---- last lines of {d.name}'s log ----\n{d.log_tail()}")
    finally:
        bench.stop_all()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(bench.results, f, indent=1)
        print(bench.markdown())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
