//! Multi-peer test harness: real `meshsync` processes with temporary homes on 127.0.0.1.
//!
//! Every node gets a fresh home (its own identity), listens on port 0, binds its API to port 0,
//! and runs with mDNS off (mDNS must never run in the root network namespace). Every process is
//! killed when its [`Node`] is dropped, also when a test panics; the daemon's log is printed then,
//! so a failing test shows what the daemons saw.
#![allow(dead_code)]

pub mod netlab;
pub mod raw;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for any single wait; tests fail instead of hanging.
pub const WAIT: Duration = Duration::from_secs(60);
/// Time a daemon gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Path of the binary under test: this build's, or `MESHSYNC_TEST_BIN` (to run a test against
/// another build, e.g. to see it fail on the commit before a fix).
pub fn bin() -> String {
    std::env::var("MESHSYNC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_meshsync").into())
}

/// Runs `meshsync --home HOME args...` to completion.
pub fn meshsync(home: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("MESHSYNC_HOME")
        .env("RUST_LOG", "warn")
        .output()
        .expect("cannot run meshsync")
}

/// Polls `check` until it returns true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // For finding where a slow test spends its time: MESHSYNC_TEST_WAITS=1 prints each wait.
    if std::env::var_os("MESHSYNC_TEST_WAITS").is_some() {
        eprintln!("waited {:?} for {what}", start.elapsed());
    }
}

/// Milliseconds since the Unix epoch, as the daemon stamps its session reports (`started_ms`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Whether a session report (an element of `sessions` in `status --json`) ran to its end.
pub fn session_succeeded(report: &Value) -> bool {
    report["error"].is_null() && report["complete"] == true
}

/// One daemon with its own temporary home.
pub struct Node {
    /// The home directory.
    pub home: PathBuf,
    /// The node's peer id.
    pub peer_id: String,
    /// Prefix for the process, e.g. `["ip", "netns", "exec", "ns1"]`.
    pub wrapper: Vec<String>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Node {
    /// Initialises a home for a loopback node, with extra `init` arguments.
    pub fn init(extra: &[&str]) -> Node {
        let mut args = vec!["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"];
        args.extend_from_slice(extra);
        Node::init_in(Vec::new(), &args)
    }

    /// Initialises a fresh home with `init` arguments `args` (the API on 127.0.0.1, port 0),
    /// for a node that runs inside `wrapper` (e.g. `ip netns exec NS`).
    pub fn init_in(wrapper: Vec<String>, args: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        let mut all = vec!["init", "--api", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let out = meshsync(&home, &all);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Node {
            home,
            peer_id,
            wrapper,
            child: None,
            _dir: Some(dir),
        }
    }

    /// A node for a home initialised by the caller.
    pub fn with_home(home: PathBuf, peer_id: String, wrapper: Vec<String>) -> Node {
        Node {
            home,
            peer_id,
            wrapper,
            child: None,
            _dir: None,
        }
    }

    /// Runs a CLI command against this node (inside its wrapper, if any).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        command.output().expect("cannot run meshsync")
    }

    fn command(&self) -> Command {
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        command
            .arg("--home")
            .arg(&self.home)
            .env_remove("MESHSYNC_HOME")
            .env("RUST_LOG", "warn");
        command
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// CPU time (user and system) the running daemon has used so far, from `/proc`.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces: the
        // first is the state (field 3), so utime and stime (14 and 15) are the 12th and 13th.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // Linux counts them in USER_HZ, 100 a second.
        Some(Duration::from_millis(ticks * 10))
    }

    /// The running daemon's peak resident memory (VmHWM) in bytes, from `/proc`.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.home.join("daemon.log")
    }

    /// Starts `meshsync run` and waits until its API answers.
    pub fn start(&mut self) {
        self.start_logging(Some("meshsync=debug,warn"));
    }

    /// [`Node::start`] with the log a user gets: no `RUST_LOG`, the daemon's default filter.
    pub fn start_with_default_log(&mut self) {
        self.start_logging(None);
    }

    fn start_logging(&mut self, filter: Option<&str>) {
        assert!(self.child.is_none(), "node already running");
        let _ = std::fs::remove_file(self.home.join("api.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut command = self.command();
        command.arg("run");
        match filter {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(command.spawn().expect("cannot start meshsync run"));
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start with {status}:\n{}", self.log());
            }
            if self.cli(&["status", "--json"]).status.success() {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "daemon did not become ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) with a pid we own; at worst the process is already gone.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if started.elapsed() > STOP_GRACE {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// Peer ids of the connected peers, or an empty set if the daemon does not answer.
    pub fn connected_peers(&self) -> BTreeSet<String> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return BTreeSet::new();
        }
        let status: Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
        status["peers"]
            .as_array()
            .expect("peers is a list")
            .iter()
            .map(|p| p["peer_id"].as_str().expect("peer_id").to_owned())
            .collect()
    }

    /// The first listen address, ending in `/p2p/<id>`.
    pub fn listen_addr(&self) -> String {
        self.status()["listen_addrs"][0]
            .as_str()
            .expect("a listen address")
            .to_owned()
    }

    /// Rewrites the config so that the next start listens on the port the daemon has now, as a
    /// real daemon on its default port would: peers that know the address can redial it.
    pub fn pin_listen_port(&self) {
        let addr = self.listen_addr();
        let without_id = addr.split("/p2p/").next().unwrap().to_owned();
        let config = self.home.join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(
            text.contains("/ip4/127.0.0.1/tcp/0"),
            "listen port already pinned"
        );
        std::fs::write(&config, text.replace("/ip4/127.0.0.1/tcp/0", &without_id)).unwrap();
    }

    /// Stops the daemon, replaces the line `from` of its config with `to` (the line must be
    /// there, as `init` wrote it) and starts it again on the same port.
    pub fn restart_with_config_line(&mut self, from: &str, to: &str) {
        self.pin_listen_port();
        self.stop();
        let config = self.home.join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let (from, to) = (format!("\n{from}\n"), format!("\n{to}\n"));
        assert!(text.contains(&from), "no `{from}` in:\n{text}");
        std::fs::write(&config, text.replace(&from, &to)).unwrap();
        self.start();
    }

    /// The API address the daemon wrote.
    pub fn api_addr(&self) -> String {
        std::fs::read_to_string(self.home.join("api.addr"))
            .expect("api.addr")
            .trim()
            .to_owned()
    }

    /// The API token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.home.join("api-token"))
            .expect("api-token")
            .trim()
            .to_owned()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Lines of the daemon's log (all runs of this home) that contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    /// Waits until more than `before` lines of the log contain every one of `needles`, i.e. the
    /// daemon wrote such a line since the caller counted `before`; returns the new count.
    pub fn wait_for_log(&self, what: &str, needles: &[&str], before: usize) -> usize {
        let mut count = 0;
        wait_until(what, WAIT, || {
            count = self.log_lines_with(needles);
            count > before
        });
        count
    }

    /// Requests from `peer` (hello aside) that this daemon answered, refusals included, while
    /// the peer has been connected (`peers[].answered` in `status --json`); 0 if not connected.
    pub fn answered_from(&self, peer: &str) -> u64 {
        self.status()["peers"]
            .as_array()
            .expect("peers is a list")
            .iter()
            .find(|p| p["peer_id"] == peer)
            .map_or(0, |p| p["answered"].as_u64().expect("answered is a number"))
    }

    /// The summary root of a share, as `status --json` shows it.
    pub fn share_root(&self, share: &str) -> String {
        let status = self.status();
        status["shares"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == share)
            .unwrap_or_else(|| panic!("no share `{share}` in {status}"))["root"]
            .as_str()
            .expect("root is a string")
            .to_owned()
    }

    /// Waits until this daemon reports a sync session it ran with `peer` for `share` that
    /// started after `since_ms` (see [`now_ms`]) and satisfies `check`; returns that report.
    pub fn wait_session(
        &self,
        what: &str,
        peer: &str,
        share: &str,
        since_ms: u64,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_session_within(what, peer, share, since_ms, check, WAIT)
    }

    /// [`Node::wait_session`] with its own deadline.
    pub fn wait_session_within(
        &self,
        what: &str,
        peer: &str,
        share: &str,
        since_ms: u64,
        check: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let mut found = None;
        wait_until(what, timeout, || {
            found = self.status()["sessions"]
                .as_array()
                .expect("sessions is a list")
                .iter()
                .find(|s| {
                    s["peer"] == peer
                        && s["share"] == share
                        && s["started_ms"].as_u64().expect("started_ms") > since_ms
                        && check(s)
                })
                .cloned();
            found.is_some()
        });
        found.unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        // For looking into a run that passed but was slow: MESHSYNC_KEEP_LOGS=DIR keeps every
        // daemon's log there, named by peer id.
        if let Some(dir) = std::env::var_os("MESHSYNC_KEEP_LOGS") {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(self.log_path(), dir.join(format!("{}.log", self.peer_id)));
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- log of {} (last {} lines) ----",
                self.peer_id,
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Several nodes; all are killed when it is dropped.
pub struct Mesh {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
}

impl Mesh {
    /// Starts `n` nodes where node `i` has every earlier node as a static peer.
    pub fn full_static(n: usize) -> Mesh {
        let mut nodes: Vec<Node> = Vec::new();
        for _ in 0..n {
            let addrs: Vec<String> = nodes.iter().map(|n| n.listen_addr()).collect();
            let mut extra = Vec::new();
            for addr in &addrs {
                extra.push("--peer");
                extra.push(addr.as_str());
            }
            let mut node = Node::init(&extra);
            node.start();
            nodes.push(node);
        }
        Mesh { nodes }
    }

    /// Starts node 0, then `n - 1` nodes that only know node 0.
    pub fn star(n: usize) -> Mesh {
        let mut first = Node::init(&[]);
        first.start();
        let addr = first.listen_addr();
        let mut nodes = vec![first];
        for _ in 1..n {
            let mut node = Node::init(&["--peer", &addr]);
            node.start();
            nodes.push(node);
        }
        Mesh { nodes }
    }

    /// Peer ids of all nodes.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.peer_id.clone()).collect()
    }

    /// Waits until every node is connected to every other node. On a timeout the panic names
    /// the pairs not connected, with each such node's last lines about dials and connections.
    pub fn wait_fully_connected(&self) {
        let ids = self.ids();
        let missing = || -> Vec<(usize, Vec<String>)> {
            self.nodes
                .iter()
                .enumerate()
                .filter_map(|(i, node)| {
                    let peers = node.connected_peers();
                    let absent: Vec<String> = ids
                        .iter()
                        .filter(|id| **id != node.peer_id && !peers.contains(*id))
                        .cloned()
                        .collect();
                    (!absent.is_empty()).then_some((i, absent))
                })
                .collect()
        };
        let start = Instant::now();
        loop {
            let absent = missing();
            if absent.is_empty() {
                return;
            }
            if start.elapsed() > WAIT {
                let mut report = String::new();
                for (i, peers) in absent {
                    let node = &self.nodes[i];
                    report += &format!(
                        "\nnode {i} ({}) is not connected to {peers:?}; its log:\n",
                        node.peer_id
                    );
                    let log = node.log();
                    let lines: Vec<&str> = log
                        .lines()
                        .filter(|l| {
                            ["dial", "connect", "refus", "WARN"]
                                .iter()
                                .any(|w| l.contains(w))
                        })
                        .collect();
                    for line in &lines[lines.len().saturating_sub(30)..] {
                        report += line;
                        report.push('\n');
                    }
                }
                panic!(
                    "timed out after {WAIT:?} waiting for every node to be connected to every other:{report}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A small client of one node's HTTP API (faster than running the CLI for every call).
pub struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    /// The API of a running node.
    pub fn of(node: &Node) -> Api {
        Api {
            base: format!("http://{}", node.api_addr()),
            token: node.token(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(WAIT))
                .build()
                .into(),
        }
    }

    /// POSTs JSON; returns the status code and the JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)
            .expect("API reachable");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GETs JSON; returns the status code and the JSON answer.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .expect("API reachable");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Puts one record, asserting success.
    pub fn put(&self, share: &str, key: &str, value: &str) {
        let (status, body) = self.post(
            &format!("/v1/kv/{share}/put"),
            &serde_json::json!({"key": key, "value": value}),
        );
        assert_eq!(status, 200, "{body}");
    }

    /// Deletes one record; returns whether it existed.
    pub fn del(&self, share: &str, key: &str) -> bool {
        let (status, _) = self.post(
            &format!("/v1/kv/{share}/del"),
            &serde_json::json!({"key": key}),
        );
        assert!(status == 200 || status == 404, "delete answered {status}");
        status == 200
    }

    /// The share's records as `kv list --json` shows them.
    pub fn list(&self, share: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/kv/{share}/list"));
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A started node holding a records share `share` with `count` records `key0`, `key1`, … all
/// set to `value`.
pub fn node_with_records(share: &str, count: usize, value: &str) -> Node {
    let mut node = Node::init(&[]);
    node.start();
    node.create_records_share(share);
    let api = Api::of(&node);
    for i in 0..count {
        api.put(share, &format!("key{i}"), value);
    }
    node
}

impl Node {
    /// Creates a records share; returns its token.
    pub fn create_records_share(&self, name: &str) -> String {
        let out = self.cli(&["share", "create", "--records", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Joins a records share from a token.
    pub fn join_records_share(&self, token: &str, name: &str) {
        let out = self.cli(&["share", "join", token, "--records", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kv list SHARE --json` through the CLI.
    pub fn kv_list_json(&self, share: &str) -> Value {
        let out = self.cli(&["kv", "list", share, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// Members of a share as this node sees them.
    pub fn share_members(&self, share: &str) -> BTreeSet<String> {
        let status = self.status();
        status["shares"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == share)
            .flat_map(|s| s["members"].as_array().unwrap().iter())
            .map(|m| m.as_str().unwrap().to_owned())
            .collect()
    }
}

/// Waits until every node's `kv list --json` of its share is identical; returns that listing.
pub fn wait_converged(nodes: &[(&Node, &str)]) -> Value {
    let start = Instant::now();
    loop {
        let mut last: Vec<Value> = nodes
            .iter()
            .map(|(n, share)| Api::of(n).list(share))
            .collect::<Vec<_>>();
        if last.windows(2).all(|w| w[0] == w[1]) {
            return last.remove(0);
        }
        if start.elapsed() > WAIT {
            panic!(
                "records did not converge within {WAIT:?}:\n{}",
                last.iter()
                    .map(|l| serde_json::to_string(l).unwrap())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A folder share across nodes: node 0 creates it, the others join; each node's folder is
/// `<node home>/../folder`.
pub struct FolderShare {
    /// The folder of each node, in node order.
    pub dirs: Vec<PathBuf>,
    /// The share's local name (the folder's directory name).
    pub name: String,
}

impl Mesh {
    /// A folder shared among all of this mesh's nodes (see [`FolderShare::among`]).
    pub fn share_folder(&self) -> FolderShare {
        let nodes: Vec<&Node> = self.nodes.iter().collect();
        FolderShare::among(&nodes)
    }
}

impl FolderShare {
    /// Shares a folder among `nodes` and waits until all are members of each other.
    pub fn among(nodes: &[&Node]) -> FolderShare {
        let dirs: Vec<PathBuf> = nodes
            .iter()
            .map(|n| n.home.parent().unwrap().join("folder"))
            .collect();
        Self::among_at(nodes, dirs)
    }

    /// [`FolderShare::among`], each node's folder at the given path (all named `folder`).
    pub fn among_at(nodes: &[&Node], dirs: Vec<PathBuf>) -> FolderShare {
        let out = nodes[0].cli(&["share", "create", "--folder", dirs[0].to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        for (node, dir) in nodes.iter().zip(&dirs).skip(1) {
            let out = node.cli(&["share", "join", &token, "--folder", dir.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let share = FolderShare {
            dirs,
            name: "folder".into(),
        };
        let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.clone()).collect();
        wait_until(
            "every node to see every other as a folder member",
            WAIT,
            || {
                nodes.iter().all(|n| {
                    let members = n.share_members(&share.name);
                    ids.iter()
                        .filter(|id| **id != n.peer_id)
                        .all(|id| members.contains(id))
                })
            },
        );
        share
    }

    /// Waits until every folder holds exactly the same tree (paths, kinds, contents, link
    /// targets), ignoring our marker directory.
    pub fn wait_identical(&self) -> BTreeSet<String> {
        self.wait_identical_within(WAIT)
    }

    /// [`FolderShare::wait_identical`] with its own deadline, for big trees.
    pub fn wait_identical_within(&self, deadline: Duration) -> BTreeSet<String> {
        let start = Instant::now();
        loop {
            let trees: Vec<Vec<(String, String)>> = self.dirs.iter().map(|d| tree(d)).collect();
            if trees.windows(2).all(|w| w[0] == w[1]) {
                return trees[0].iter().map(|(p, _)| p.clone()).collect();
            }
            if start.elapsed() > deadline {
                panic!(
                    "folders did not converge within {deadline:?}:\n{}",
                    trees
                        .iter()
                        .map(|t| format!("{t:?}").chars().take(2000).collect::<String>())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The folder status of node `i`'s share.
    pub fn status(&self, node: &Node) -> Value {
        let status = node.status();
        status["shares"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == self.name.as_str())
            .map(|s| s["folder"].clone())
            .expect("the folder share")
    }
}

/// Every path under `dir` (except `.meshsync`) with a fingerprint of what it is.
pub fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".meshsync" || rel.starts_with(".meshsync/") {
                continue;
            }
            // Entries may vanish while we look (temporary files being renamed).
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let Ok(target) = std::fs::read_link(&path) else {
                    continue;
                };
                out.push((rel, format!("link:{}", target.display())));
            } else if meta.is_dir() {
                out.push((rel, "dir".into()));
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.push((rel, format!("file:{}", blake3::hash(&bytes).to_hex())));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `len` pseudo-random bytes, the same for the same `seed` (a fixed LCG: no dependency).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// A file system mounted for one test (it needs root), unmounted (lazily) when dropped.
pub struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. `"16m"`) at `at`, creating the directory.
    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        Mount::run(at, &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
    }

    /// A tmpfs of `size` that holds at most `inodes` files and directories (its root included).
    pub fn tmpfs_with_inodes(at: &Path, size: &str, inodes: u32) -> Mount {
        let options = format!("size={size},nr_inodes={inodes}");
        Mount::run(at, &["-t", "tmpfs", "-o", &options, "tmpfs"])
    }

    /// Mounts the directory `source` at `at` too (`mount --bind`), creating `at`: the same
    /// file system, another mount, which a rename cannot cross.
    pub fn bind(source: &Path, at: &Path) -> Mount {
        Mount::run(at, &["--bind", source.to_str().unwrap()])
    }

    fn run(at: &Path, args: &[&str]) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(args)
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a file system and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_owned())
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Remounts it with `mode`: `ro`, `rw`, or other mount options (`nr_inodes=N`).
    pub fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A running CLI command (`events`, `status --watch`) whose output lines are collected as they
/// come; killed when dropped.
pub struct LineReader {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LineReader {
    /// Runs `meshsync --home HOME ARGS…` with its standard output read line by line.
    pub fn start(node: &Node, args: &[&str]) -> LineReader {
        use std::io::BufRead as _;
        let mut child = Command::new(bin())
            .arg("--home")
            .arg(&node.home)
            .args(args)
            .env_remove("MESHSYNC_HOME")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot run meshsync");
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        LineReader { child, lines }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The lines so far, joined.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

impl Drop for LineReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the files of directory `from` into `to` (created), as a backup of a daemon's `state`
/// directory taken while it is stopped.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
