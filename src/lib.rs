//! meshsync: a peer-to-peer mesh sync daemon.
//!
//! One daemon runs on each machine. Daemons find each other with mDNS on the local network and a
//! Kademlia DHT beyond it, connect over TCP with Noise and Yamux, and are driven locally through
//! an HTTP control API that the `meshsync` CLI is a thin client of.
//!
//! # Layout
//! Each layer imports only from the layers below it (checked by reading the module graph):
//! - Base: [`config`] (`config.toml`, a raw layer validated into [`config::Config`]), [`home`]
//!   (identity key, API token, config, `api.addr`), [`share`] (tokens, membership proofs, write
//!   signatures), [`cbor`] (the one CBOR helper), [`atomic_write`] (small files replaced
//!   atomically), [`backoff`] (the doubling wait of retry loops), [`quiet`] (warnings said once
//!   per condition), [`timefmt`] (times as status shows them), [`events`] (the bounded stream of
//!   what happened, that the engine and folders write and the API reads).
//! - Pure core: [`merge`] (version vectors, clocks, the multi-value register) and [`reconcile`]
//!   (Merkle summaries and set reconciliation). No I/O.
//! - [`store`]: the one database, on its own thread: entries, summaries, and the pages and local
//!   state a share's owner keeps. Knows no folders and no wire.
//! - [`net`]: the single task that owns the libp2p swarm, and its handle [`net::NetClient`];
//!   [`net::protocol`] documents the wire protocol, [`net::peers`] the peer book-keeping. Knows no
//!   records.
//! - [`folder`]: real directories kept in step with a share's entries (scan, watch, plan, fetch,
//!   write), driven by the engine.
//! - [`engine`]: shares, membership, serving peers, announcing, scheduling sessions.
//! - [`api`] (the HTTP control API), [`client`] (the blocking API client the CLI uses) and
//!   [`daemon`] (wires the actors together and runs until shutdown).

pub mod api;
pub mod atomic_write;
pub mod backoff;
pub mod cbor;
pub mod client;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod folder;
pub mod home;
pub mod lab;
pub mod merge;
pub mod net;
pub mod quiet;
pub mod reconcile;
pub mod share;
pub mod store;
pub mod timefmt;
