//! The lab's daemons: one home and one `meshsync run` process per peer, on loopback. Each binds
//! a port the system picks at its first start (no race with other programs for a port chosen
//! beforehand), which is then written into its config, so restarts keep it and the others'
//! static addresses stay right. Every process started here is stopped here, also when the lab
//! is interrupted.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use rustix::process::{Pid, Signal, kill_process};

use super::LabError;
use crate::api::Status;
use crate::client::ApiClient;
use crate::home::{Home, InitOptions, InitOutcome};

/// Longest wait for a daemon's API after starting it.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One peer of the lab.
pub struct LabPeer {
    /// Its name in the scenario.
    pub name: String,
    /// Its home.
    pub home: Home,
    /// Its peer id.
    pub id: PeerId,
    /// Its listen address, once it has started.
    pub addr: Option<Multiaddr>,
    /// The running daemon, if it runs.
    child: Option<Child>,
    /// Whether it is stopped with SIGSTOP.
    paused: bool,
    /// Traffic counted by daemons of it that were killed (their counters died with them).
    pub bytes_before: (u64, u64),
}

/// What a new home listens on until its first start picked a port.
const ANY_PORT: &str = "/ip4/127.0.0.1/tcp/0";

impl LabPeer {
    /// Creates the peer's home under `dir` (not started).
    pub fn init(dir: &Path, name: &str) -> Result<LabPeer, LabError> {
        let home = Home::at(dir.join(name));
        let options = InitOptions {
            listen: vec![ANY_PORT.into()],
            api: Some("127.0.0.1:0".into()),
            peers: Vec::new(),
            no_mdns: true,
            name: Some(name.to_owned()),
        };
        let id = match home.init(&options) {
            Ok(InitOutcome::Created(id) | InitOutcome::AlreadyInitialised(id)) => id,
            Err(e) => return Err(LabError::Setup(format!("init {name}: {e}"))),
        };
        Ok(LabPeer {
            name: name.to_owned(),
            home,
            id,
            addr: None,
            child: None,
            paused: false,
            bytes_before: (0, 0),
        })
    }

    /// Adds another (started) peer's address to this one's static peers, through its API (which
    /// saves it in the config and dials it).
    pub fn know(&self, other: &LabPeer) -> Result<(), LabError> {
        let Some(addr) = &other.addr else {
            return Err(LabError::Setup(format!("{} has not started", other.name)));
        };
        let _: serde_json::Value = self
            .client()?
            .post(
                "/v1/peers",
                &crate::api::AddPeer {
                    addr: addr.to_string(),
                },
            )
            .map_err(|e| LabError::Api(self.name.clone(), e.to_string()))?;
        Ok(())
    }

    /// After the first start: the port the daemon got, kept in its config for restarts.
    fn pin_port(&mut self) -> Result<(), LabError> {
        let status = self.status()?;
        let addr: Multiaddr = status
            .listen_addrs
            .iter()
            .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| LabError::Setup(format!("{} listens on no loopback port", self.name)))?;
        let port = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        });
        let path = self.home.config_path();
        let config = std::fs::read_to_string(&path).map_err(LabError::io("read a config"))?;
        let pinned = config.replace(
            &format!("\"{ANY_PORT}\""),
            &format!("\"/ip4/127.0.0.1/tcp/{}\"", port.unwrap_or(0)),
        );
        crate::home::write_atomically(&path, pinned.as_bytes(), None)
            .map_err(|e| LabError::Setup(format!("config of {}: {e}", self.name)))?;
        self.addr = Some(addr);
        Ok(())
    }

    /// Starts the daemon and waits for its API.
    pub fn start(&mut self) -> Result<(), LabError> {
        if self.child.is_some() {
            return Ok(());
        }
        // A killed daemon leaves its address file behind; wait for the new one's.
        self.home.remove_api_addr();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.dir().join("daemon.log"))
            .map_err(LabError::io("open a daemon log"))?;
        let exe = std::env::current_exe().map_err(LabError::io("find the meshsync binary"))?;
        let child = Command::new(exe)
            .arg("--home")
            .arg(self.home.dir())
            .args(["run", "--no-mdns"])
            .env_remove("MESHSYNC_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(LabError::io("start a daemon"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Ok(client) = self.client()
                && client.get::<serde_json::Value>("/health").is_ok()
            {
                if self.addr.is_none() {
                    self.pin_port()?;
                }
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(LabError::Setup(format!(
                    "the daemon of {} exited at start ({status}); see {}",
                    self.name,
                    self.home.dir().join("daemon.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LabError::Setup(format!(
            "the daemon of {} did not answer within {START_TIMEOUT:?}",
            self.name
        )))
    }

    /// The API client of the running daemon.
    pub fn client(&self) -> Result<ApiClient, LabError> {
        ApiClient::for_home(&self.home).map_err(|e| LabError::Api(self.name.clone(), e.to_string()))
    }

    /// Whether its daemon runs and is not paused.
    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// `kill -9`: no shutdown, no flush. Its traffic so far is kept for the report.
    pub fn kill(&mut self) {
        if let Ok(status) = self.status() {
            let (sent, received) = traffic(&status);
            self.bytes_before.0 += sent;
            self.bytes_before.1 += received;
        }
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        if let Some(child) = &self.child
            && !self.paused
        {
            let _ = kill_process(Pid::from_child(child), Signal::STOP);
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if let Some(child) = &self.child
            && self.paused
        {
            let _ = kill_process(Pid::from_child(child), Signal::CONT);
            self.paused = false;
        }
    }

    /// Its status.
    pub fn status(&self) -> Result<Status, LabError> {
        self.client()?
            .get("/v1/status")
            .map_err(|e| LabError::Api(self.name.clone(), e.to_string()))
    }

    /// Stops the daemon: SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = kill_process(Pid::from_child(&child), Signal::TERM);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LabPeer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bytes sent and received over all shares of a status (file content fetched included).
pub fn traffic(status: &Status) -> (u64, u64) {
    status.shares.iter().fold((0, 0), |(s, r), share| {
        let fetched = share.folder.as_ref().map_or(0, |f| f.fetched_bytes);
        (s + share.bytes_sent, r + share.bytes_received + fetched)
    })
}

/// Where the lab keeps a peer's folder for `share`.
pub fn folder_of(peer: &LabPeer, share: &str) -> PathBuf {
    peer.home.dir().join("folders").join(share)
}
