//! The daemon: starts the network task and the control API, and stops both when told to.
//!
//! Shutdown is an input ([`run`] takes a future), so the binary wires it to SIGINT/SIGTERM and
//! tests can stop a daemon in-process the same way.

use std::fs::OpenOptions;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::engine;
use crate::home::{Home, HomeError};
use crate::net::{self, NetConfig, NetError};
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

    let listener = TcpListener::bind(config.api)
        .await
        .map_err(|source| DaemonError::Api {
            addr: config.api.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| DaemonError::Api {
        addr: config.api.to_string(),
        source,
    })?;

    let store = StoreHandle::open(
        &home.state_dir(),
        peer_id,
        crate::folder::validate_remote_entry,
    )?;
    if let Some(psk) = &config.psk {
        info!(
            "private mesh: only peers holding the key with fingerprint {} can connect",
            psk.fingerprint()
        );
    }
    let (net, net_events) = net::spawn(
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
        },
    )?;

    let engine = engine::spawn(peer_id, store.clone(), net.clone(), net_events);

    home.write_api_addr(bound)?;
    info!("control API on http://{bound}");
    // Long-lived responses (kv watch) end when shutdown starts, or the graceful shutdown would
    // wait for their clients forever.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let app = api::router(ApiState {
        stopping,
        net: net.clone(),
        engine: engine.clone(),
        store: store.clone(),
        token: Arc::from(token),
        config_path: config.path.clone(),
        bound,
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        })
        .await;
    info!("shutting down");
    engine.shutdown().await;
    net.shutdown().await;
    store.shutdown().await;
    home.remove_api_addr();
    served.map_err(|source| DaemonError::Api {
        addr: bound.to_string(),
        source,
    })
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
    let locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
    if locked.is_err() {
        return Err(DaemonError::AlreadyRunning(
            home.dir().display().to_string(),
        ));
    }
    Ok(file)
}
