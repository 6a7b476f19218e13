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
use crate::client::{ApiClient, ClientError};
use crate::home::{Home, InitOptions, InitOutcome};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Longest wait for a daemon's API after starting it.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to a lab daemon's API failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The API answered with an error, or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The peer's network namespace could not be entered.
    #[error("cannot enter network namespace {0}: {1}")]
    Namespace(String, std::io::Error),
    /// The thread making the call panicked.
    #[error("the API call panicked")]
    Panicked,
}

/// The prefix that runs a program with its clock `offset` seconds off: see [`faketime_wrapper`].
pub fn clock_wrapper(offset: i64) -> Result<Vec<String>, String> {
    faketime_wrapper(&format!("{offset:+}s"))
}

/// The prefix that runs a program under libfaketime with `FAKETIME=spec` (`+200s`, `+0 x2`):
/// `env` with the library preloaded. Not the `faketime` program: it forks and waits, so a
/// signal to the pid it gives (a stop, a kill) would leave the real process running.
pub fn faketime_wrapper(spec: &str) -> Result<Vec<String>, String> {
    let library = ["/usr/lib", "/usr/local/lib", "/usr/lib64"]
        .iter()
        .flat_map(|base| {
            let direct = Path::new(base).join("faketime/libfaketime.so.1");
            let per_arch = std::fs::read_dir(base)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("faketime/libfaketime.so.1"));
            std::iter::once(direct).chain(per_arch)
        })
        .find(|path| path.is_file())
        .ok_or("libfaketime.so.1 not found (install the Debian package `faketime`)")?;
    Ok(vec![
        "env".into(),
        format!("LD_PRELOAD={}", library.display()),
        format!("FAKETIME={spec}"),
    ])
}

/// Moves the calling thread into the named network namespace (`ip netns` names).
fn enter_namespace(name: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(Path::new("/run/netns").join(name))?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(())
}

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
    /// What its config listens on until its first start picked a port.
    any_port: String,
    /// Its network namespace, if it has one.
    netns: Option<String>,
    /// How far its clock is off, in seconds (its daemon runs under `faketime`).
    clock_offset: Option<i64>,
    /// The running daemon, if it runs.
    child: Option<Child>,
    /// Whether it is stopped with SIGSTOP.
    paused: bool,
    /// Traffic counted by daemons of it that were killed (their counters died with them).
    pub bytes_before: (u64, u64),
    /// Shares it left (a `leave` fault) and has not joined again.
    pub left: std::collections::HashSet<String>,
}

/// Where a peer runs.
#[derive(Debug, Clone)]
pub enum Place {
    /// On 127.0.0.1 in the lab's own namespace, without mDNS.
    Loopback,
    /// In a network namespace of a [`super::netns::Lan`], at `address`, with mDNS.
    Namespace {
        /// The namespace's name.
        name: String,
        /// The host's address on the LAN.
        address: String,
    },
}

impl LabPeer {
    /// Creates the peer's home under `dir` (not started).
    pub fn init(
        dir: &Path,
        name: &str,
        place: Place,
        clock_offset: Option<i64>,
    ) -> Result<LabPeer, LabError> {
        let home = Home::at(dir.join(name));
        let (address, netns) = match place {
            Place::Loopback => ("127.0.0.1".to_owned(), None),
            Place::Namespace { name, address } => (address, Some(name)),
        };
        let any_port = format!("/ip4/{address}/tcp/0");
        let options = InitOptions {
            listen: vec![any_port.clone()],
            api: Some("127.0.0.1:0".into()),
            peers: Vec::new(),
            no_mdns: netns.is_none(),
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
            any_port,
            netns,
            clock_offset,
            child: None,
            paused: false,
            bytes_before: (0, 0),
            left: Default::default(),
        })
    }

    /// Adds another (started) peer's address to this one's static peers, through its API (which
    /// saves it in the config and dials it).
    pub fn know(&self, other: &LabPeer) -> Result<(), LabError> {
        let Some(addr) = &other.addr else {
            return Err(LabError::Setup(format!("{} has not started", other.name)));
        };
        let _: serde_json::Value = self
            .post(
                "/v1/peers",
                &crate::api::AddPeer {
                    addr: addr.to_string(),
                },
            )
            .map_err(|e| LabError::Api(self.name.clone(), e.to_string()))?;
        Ok(())
    }

    /// Makes another (started) peer one of this one's Kademlia bootstrap peers, in its config:
    /// for its next start.
    pub fn bootstrap_from(&self, other: &LabPeer) -> Result<(), LabError> {
        let Some(addr) = &other.addr else {
            return Err(LabError::Setup(format!("{} has not started", other.name)));
        };
        crate::config::add_bootstrap_peer(&self.home.config_path(), addr)
            .map_err(|e| LabError::Setup(format!("config of {}: {e}", self.name)))?;
        Ok(())
    }

    /// After the first start: the port the daemon got, kept in its config for restarts.
    fn pin_port(&mut self) -> Result<(), LabError> {
        let status = self.status()?;
        let prefix = self.any_port.trim_end_matches('0');
        let addr: Multiaddr = status
            .listen_addrs
            .iter()
            .find(|a| a.starts_with(prefix))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                LabError::Setup(format!("{} listens on no port at {prefix}", self.name))
            })?;
        let port = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        });
        let path = self.home.config_path();
        let config = std::fs::read_to_string(&path).map_err(LabError::io("read a config"))?;
        let pinned = config.replace(
            &format!("\"{}\"", self.any_port),
            &format!("\"{prefix}{}\"", port.unwrap_or(0)),
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
        // `ip netns exec` and `env` each exec the next: the pid is the daemon's, so stopping
        // and killing it reach the daemon.
        let mut prefix: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            prefix.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if let Some(offset) = self.clock_offset {
            prefix.extend(clock_wrapper(offset).map_err(LabError::Privileges)?);
        }
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let child = command
            .arg("--home")
            .arg(self.home.dir())
            .arg("run")
            .env_remove("MESHSYNC_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(LabError::io("start a daemon"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if self.get::<serde_json::Value>("/health").is_ok() {
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

    /// Runs `call` with a client of the daemon's API, from inside the peer's network namespace
    /// if it has one (the API listens on that namespace's loopback): in a thread of its own,
    /// which enters the namespace and ends with the call.
    fn with_api<T: Send>(
        &self,
        call: impl FnOnce(&ApiClient) -> Result<T, ClientError> + Send,
    ) -> Result<T, CallError> {
        let home = &self.home;
        let run = move || -> Result<T, CallError> {
            let client = ApiClient::for_home(home)?;
            Ok(call(&client)?)
        };
        let Some(ns) = &self.netns else {
            return run();
        };
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_namespace(ns).map_err(|e| CallError::Namespace(ns.clone(), e))?;
                    run()
                })
                .join()
                .unwrap_or_else(|_| Err(CallError::Panicked))
        })
    }

    /// `GET path` on the daemon's API.
    pub fn get<T: DeserializeOwned + Send>(&self, path: &str) -> Result<T, CallError> {
        self.with_api(|client| client.get(path))
    }

    /// `POST path` with `body` on the daemon's API.
    pub fn post<B: Serialize + Sync, T: DeserializeOwned + Send>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        self.with_api(|client| client.post(path, body))
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
        self.get("/v1/status")
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
