//! The daemon: starts the network task and the control API, and stops both when told to.
//!
//! Shutdown is an input ([`run`] takes a future), so the binary wires it to SIGINT/SIGTERM and
//! tests can stop a daemon in-process the same way.

use std::fs::OpenOptions;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use rustix::io::Errno;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::engine::{self, EngineHandle};
use crate::events::Events;
use crate::home::{Home, HomeError};
use crate::net::{self, NetClient, NetConfig, NetError, NetEvent};
use crate::store::{StoreError, StoreHandle};

/// File in the home that a running daemon holds an exclusive lock on.
pub const LOCK_FILE: &str = "daemon.lock";

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A problem with the home (identity, token).
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another daemon already runs with this home.
    #[error("another meshsync daemon is already running with home {0}")]
    AlreadyRunning(String),
    /// The lock file could not be opened.
    #[error("cannot open lock file {path}: {source}")]
    Lock {
        /// The lock file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lock file could not be locked for a reason other than another daemon holding it.
    #[error("cannot lock {path}: {source}")]
    Flock {
        /// The lock file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The blocking task that opens the store panicked or was cancelled.
    #[error("opening the store in {dir} did not finish: {source}")]
    StoreTask {
        /// The store's directory.
        dir: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The API could not bind or serve.
    #[error("control API on {addr}: {source}")]
    Api {
        /// The configured address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the daemon for `home` with `config` until `shutdown` completes.
pub async fn run(
    home: Home,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let _lock = lock_home(&home)?;
    let keypair = home.load_identity()?;
    let token = home.load_token()?;
    let peer_id = keypair.public().to_peer_id();
    info!(
        "meshsync {} starting as {peer_id}",
        env!("CARGO_PKG_VERSION")
    );
    let (listener, bound) = bind_api(&config).await?;
    let store = open_store(&home, peer_id).await?;
    let (net, net_events) = start_net(keypair, &config)?;
    let folder_settings = config.folders.clone();
    let events = Events::default();
    let engine = engine::spawn(
        peer_id,
        home.dir().to_owned(),
        store.clone(),
        net.clone(),
        net_events,
        folder_settings,
        events.clone(),
    );
    let running = Running {
        net,
        engine,
        store,
        events,
    };

    home.write_api_addr(bound)?;
    info!("control API on http://{bound}");
    let served = serve_api(listener, bound, &running, token, &config, shutdown).await;
    info!("shutting down");
    running.stop().await;
    home.remove_api_addr();
    served.map_err(|source| DaemonError::Api {
        addr: bound.to_string(),
        source,
    })
}

/// The actors of a running daemon, stopped in order by [`Running::stop`].
struct Running {
    net: NetClient,
    engine: EngineHandle,
    store: StoreHandle,
    events: Events,
}

impl Running {
    /// Stops the engine first (it uses both others), then the network, then the store, which
    /// flushes last.
    async fn stop(self) {
        self.engine.shutdown().await;
        self.net.shutdown().await;
        self.store.shutdown().await;
    }
}

/// Binds the control API's address (port 0 picks one) and returns the address it got.
async fn bind_api(config: &Config) -> Result<(TcpListener, SocketAddr), DaemonError> {
    let api_error = |source| DaemonError::Api {
        addr: config.api.to_string(),
        source,
    };
    let listener = TcpListener::bind(config.api).await.map_err(api_error)?;
    let bound = listener.local_addr().map_err(api_error)?;
    Ok((listener, bound))
}

/// Opens (and if needed migrates) the store on a blocking thread: redb reads and writes files,
/// which must not happen on an async worker.
async fn open_store(home: &Home, peer_id: PeerId) -> Result<StoreHandle, DaemonError> {
    let dir = home.state_dir();
    let opened = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || StoreHandle::open(&dir, peer_id, crate::folder::validate_remote_entry)
    })
    .await
    .map_err(|source| DaemonError::StoreTask {
        dir: dir.display().to_string(),
        source,
    })?;
    Ok(opened?)
}

/// Starts the network task with the network part of `config`.
fn start_net(
    keypair: Keypair,
    config: &Config,
) -> Result<(NetClient, mpsc::UnboundedReceiver<NetEvent>), DaemonError> {
    if let Some(psk) = &config.psk {
        info!(
            "private mesh: only peers holding the key with fingerprint {} can connect",
            psk.fingerprint()
        );
    }
    let started = net::spawn(
        keypair,
        NetConfig {
            listen: config.listen.clone(),
            peers: config.peers.clone(),
            bootstrap: config.bootstrap.clone(),
            mdns: config.mdns,
            max_discovered_peers: config.max_discovered_peers,
            trusted_peers: config.trusted_peers.clone(),
            blocked_peers: config.blocked_peers.clone(),
            psk: config.psk,
            inbound_buffer: net::budget::Limits {
                total: config.inbound_buffer_total,
                per_peer: config.inbound_buffer_per_peer,
            },
            name: config.name.clone(),
        },
    )?;
    Ok(started)
}

/// Serves the control API until `shutdown` completes, then lets requests in progress finish.
async fn serve_api(
    listener: TcpListener,
    bound: SocketAddr,
    running: &Running,
    token: String,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Long-lived responses (kv watch) end when shutdown starts, or the graceful shutdown would
    // wait for their clients forever.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let app = api::router(ApiState {
        stopping,
        net: running.net.clone(),
        engine: running.engine.clone(),
        store: running.store.clone(),
        events: running.events.clone(),
        token: Arc::from(token),
        config_path: config.path.clone(),
        name: config.name.clone(),
        bound,
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        })
        .await
}

/// Takes an exclusive `flock` on the home's lock file for the daemon's lifetime; the kernel drops
/// it when the process dies, so a killed daemon never leaves a stale lock.
fn lock_home(home: &Home) -> Result<std::fs::File, DaemonError> {
    let path = home.dir().join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Lock {
            path: path.display().to_string(),
            source,
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|errno| lock_failure(errno, home.dir(), &path))?;
    Ok(file)
}

/// What a failed non-blocking `flock` means: `EWOULDBLOCK` is another daemon holding the lock;
/// anything else (no lock support on that file system, no kernel memory, ...) is reported as
/// itself.
fn lock_failure(errno: Errno, home: &Path, lock_file: &Path) -> DaemonError {
    if errno == Errno::WOULDBLOCK {
        DaemonError::AlreadyRunning(home.display().to_string())
    } else {
        DaemonError::Flock {
            path: lock_file.display().to_string(),
            source: errno.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_home_means_already_running() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let first = lock_home(&home).unwrap();
        // flock locks belong to the open file description, so a second open in the same
        // process conflicts like a second daemon would.
        assert!(matches!(
            lock_home(&home),
            Err(DaemonError::AlreadyRunning(_))
        ));
        drop(first);
        assert!(lock_home(&home).is_ok());
    }

    #[test]
    fn other_flock_errors_are_reported_as_themselves() {
        let (home, file) = (Path::new("/h"), Path::new("/h/daemon.lock"));
        assert!(matches!(
            lock_failure(Errno::WOULDBLOCK, home, file),
            DaemonError::AlreadyRunning(_)
        ));
        match lock_failure(Errno::NOLCK, home, file) {
            DaemonError::Flock { path, source } => {
                assert_eq!(path, "/h/daemon.lock");
                assert_eq!(source.raw_os_error(), Some(Errno::NOLCK.raw_os_error()));
            }
            other => panic!("expected a lock error, got {other:?}"),
        }
    }
}
