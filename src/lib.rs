//! meshsync: a peer-to-peer mesh sync daemon.
//!
//! One daemon runs on each machine. Daemons find each other with mDNS on the local network and a
//! Kademlia DHT beyond it, connect over TCP with Noise and Yamux, and are driven locally through
//! an HTTP control API that the `meshsync` CLI is a thin client of.
//!
//! # Layout
//! - [`config`]: `config.toml`, parsed into a raw layer and validated into [`config::Config`].
//! - [`home`]: the home directory: identity key, API token, config, `api.addr`.
//! - [`net`]: the single task that owns the libp2p swarm, and its handle [`net::NetClient`];
//!   [`net::protocol`] documents the wire protocol, [`net::peers`] the peer book-keeping.
//! - [`api`]: the HTTP control API served by the daemon.
//! - [`client`]: the blocking API client the CLI uses.
//! - [`daemon`]: wires net and API together and runs until shutdown.
//! - [`backoff`]: the doubling wait of retry loops (static redials, DHT lookups).

pub mod api;
pub mod atomic_write;
pub mod backoff;
pub mod cbor;
pub mod client;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod folder;
pub mod home;
pub mod merge;
pub mod net;
pub mod reconcile;
pub mod share;
pub mod store;
