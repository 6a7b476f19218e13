//! Multi-peer test harness: real `meshsync` processes with temporary homes on 127.0.0.1.
//!
//! Every node gets a fresh home (its own identity), listens on port 0, binds its API to port 0,
//! and runs with mDNS off (mDNS must never run in the root network namespace). Every process is
//! killed when its [`Node`] is dropped, also when a test panics; the daemon's log is printed then,
//! so a failing test shows what the daemons saw.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for any single wait; tests fail instead of hanging.
pub const WAIT: Duration = Duration::from_secs(60);
/// Time a daemon gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshsync")
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
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        let mut args = vec![
            "init",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
        ];
        args.extend_from_slice(extra);
        let out = meshsync(&home, &args);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Node {
            home,
            peer_id,
            wrapper: Vec::new(),
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

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.home.join("daemon.log")
    }

    /// Starts `meshsync run` and waits until its API answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let _ = std::fs::remove_file(self.home.join("api.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut command = self.command();
        command
            .arg("run")
            .env("RUST_LOG", "meshsync=debug,warn")
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
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
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

    /// Waits until every node is connected to every other node.
    pub fn wait_fully_connected(&self) {
        let ids = self.ids();
        wait_until("every node to be connected to every other", WAIT, || {
            self.nodes.iter().all(|node| {
                let peers = node.connected_peers();
                ids.iter()
                    .filter(|id| **id != node.peer_id)
                    .all(|id| peers.contains(id))
            })
        });
    }
}
