//! The local control API: HTTP/JSON on a loopback address, used by the CLI, scripts and browsers.
//!
//! Every endpoint except `GET /health` needs `Authorization: Bearer <token>` with the token from
//! the home's `api-token` file; a wrong or missing token gets `401` and nothing else. Requests
//! that carry a browser `Origin` other than the API's own are refused, so a web page cannot drive
//! the daemon through localhost.
//!
//! | method | path          | body              | answer                         |
//! |--------|---------------|-------------------|--------------------------------|
//! | GET    | `/health`     |                   | `{"status":"ok"}` (no token)   |
//! | GET    | `/v1/status`  |                   | [`Status`]                     |
//! | GET    | `/v1/peers`   |                   | list of [`crate::net::PeerStatus`] |
//! | POST   | `/v1/peers`   | `{"addr": "..."}` | [`PeerAdded`]                  |
//! | POST   | `/v1/peers/block` | `{"peer_id": "..."}` | [`BlockPeer`]              |
//! | POST   | `/v1/peers/unblock` | `{"peer_id": "..."}` | [`UnblockPeer`]          |
//!
//! Shares and records are in [`records`].
//!
//! Errors are JSON `{"error": "..."}` with a 4xx or 5xx status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::engine::{EngineHandle, SessionReport, ShareStatus};
use crate::net::{NetClient, NetStatus, PeerStatus};
use crate::store::{StoreHandle, StoreUsage};

pub mod events;
pub mod folders;
pub mod metrics;
mod page;
pub mod records;
pub mod text;
pub mod watch;

/// Largest request body: a batch put of many records.
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The network task.
    pub net: NetClient,
    /// The sync engine.
    pub engine: EngineHandle,
    /// The store.
    pub store: StoreHandle,
    /// What happened, for `GET /v1/events`.
    pub events: crate::events::Events,
    /// The bearer token every request must carry.
    pub token: Arc<str>,
    /// The config file, where `peer add` remembers peers.
    pub config_path: PathBuf,
    /// This device's name, for `status`.
    pub name: Option<String>,
    /// The address the API is bound to, for the origin check.
    pub bound: SocketAddr,
    /// Becomes true when the daemon starts shutting down; streamed answers end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Our peer id.
    pub peer_id: String,
    /// This device's name (`name` in the config; null if none).
    #[serde(default)]
    pub name: Option<String>,
    /// Software version.
    pub version: String,
    /// Dialable listen addresses, each ending in `/p2p/<peer_id>`.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// Configured static peers.
    pub static_peers: Vec<String>,
    /// Whether mDNS discovery runs.
    pub mdns: bool,
    /// Peers refused for a while after sending content that did not match its hash.
    #[serde(default)]
    pub banned: Vec<String>,
    /// The protections against hostile and foreign peers, at work.
    #[serde(default)]
    pub guards: crate::net::client::GuardStatus,
    /// How far the daemon's own readers of the store's change notices are behind, and the
    /// peers' merges that waited for them.
    #[serde(default)]
    pub change_notices: crate::store::ChangeNoticeStatus,
    /// Each configured static peer: connected, or why not and when it is dialled next.
    #[serde(default)]
    pub static_peer_status: Vec<crate::net::peers::StaticPeerStatus>,
    /// The API address.
    pub api: String,
    /// Shares with their members and byte counters.
    pub shares: Vec<ShareStatus>,
    /// The most recent reconciliation sessions, newest last: peer, share, round trips, bytes
    /// each way, entries pulled and pushed.
    pub sessions: Vec<SessionReport>,
}

/// Body of `POST /v1/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddPeer {
    /// A multiaddr, best ending in `/p2p/<peer id>`.
    pub addr: String,
}

/// Answer to `POST /v1/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerAdded {
    /// The address as understood.
    pub addr: String,
    /// False if it was already configured.
    pub added: bool,
}

/// Body of `POST /v1/peers/block`, and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockPeer {
    /// The peer id to refuse.
    pub peer_id: String,
    /// In the answer: false if it was already blocked.
    #[serde(default)]
    pub blocked: bool,
}

/// Body of `POST /v1/peers/unblock`, and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnblockPeer {
    /// The peer id to stop refusing.
    pub peer_id: String,
    /// In the answer: false if it was not blocked.
    #[serde(default)]
    pub unblocked: bool,
}

/// Body of `POST /v1/peers/remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovePeer {
    /// A configured address, or a peer id (every address ending in `/p2p/<id>`).
    pub peer: String,
}

/// Answer to `POST /v1/peers/remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRemoved {
    /// The addresses no longer configured or dialled.
    pub removed: Vec<String>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// The API's routes, with authentication applied to all but `/health` and the status page.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers).post(add_peer))
        .route("/v1/peers/block", post(block_peer))
        .route("/v1/peers/unblock", post(unblock_peer))
        .route("/v1/peers/remove", post(remove_peer))
        .route("/v1/store", get(store_usage))
        .merge(records::routes())
        .merge(folders::routes())
        .merge(events::routes())
        .merge(metrics::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .merge(page::routes())
        .merge(protected)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            same_origin_only,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn authorize(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        next.run(request).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized").into_response()
    }
}

/// Browsers send `Origin` on cross-site requests; only our own origin may call us.
async fn same_origin_only(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = [
            format!("http://{}", state.bound),
            format!("http://localhost:{}", state.bound.port()),
        ];
        let allowed = origin
            .to_str()
            .map(|o| own.iter().any(|own| own == o))
            .unwrap_or(false);
        if !allowed {
            return ApiError::new(StatusCode::FORBIDDEN, "cross-origin requests are refused")
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares the presented token with ours in time that does not depend on where they differ
/// (`subtle`); only the length may show, and every token we make has the same length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

/// Runs a change to `config.toml` on a blocking thread (it reads and replaces the file).
async fn change_config<T: Send + 'static>(
    state: &ApiState,
    change: impl FnOnce(&std::path::Path) -> Result<T, crate::config::ConfigError> + Send + 'static,
) -> Result<T, ApiError> {
    let path = state.config_path.clone();
    tokio::task::spawn_blocking(move || change(&path))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The network task is gone (the daemon is stopping).
fn net_gone(e: crate::net::NetError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// A peer id from a request body, or a clear 400.
fn peer_id_from(text: &str) -> Result<libp2p::PeerId, ApiError> {
    text.trim().parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{text}` is not a peer id ({e})"),
        )
    })
}

async fn net_status(state: &ApiState) -> Result<NetStatus, ApiError> {
    state.net.status().await.map_err(net_gone)
}

async fn status(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    Ok(Json(gather_status(&state).await?))
}

/// What `GET /v1/status` answers, from the network task and the engine.
async fn gather_status(state: &ApiState) -> Result<Status, ApiError> {
    let net = net_status(state).await?;
    let engine = state
        .engine
        .status()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let names: std::collections::HashMap<&str, &str> = net
        .peers
        .iter()
        .filter_map(|p| Some((p.peer_id.as_str(), p.name.as_deref()?)))
        .collect();
    let mut shares = engine.shares;
    for member in shares.iter_mut().flat_map(|s| s.member_status.iter_mut()) {
        member.name = names.get(member.peer_id.as_str()).map(|n| (*n).to_owned());
    }
    Ok(Status {
        peer_id: net.peer_id,
        name: state.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        listen_addrs: net.listen_addrs,
        peers: net.peers,
        static_peers: net.static_peers,
        mdns: net.mdns,
        banned: net.banned,
        guards: net.guards,
        change_notices: state.store.change_notices(),
        static_peer_status: net.static_peer_status,
        api: state.bound.to_string(),
        shares,
        sessions: engine.sessions,
    })
}

/// `GET /v1/store`: what the store's file holds, table by table (reads every page: slow on a
/// big store, so it is asked for, never polled).
async fn store_usage(State(state): State<ApiState>) -> Result<Json<StoreUsage>, ApiError> {
    Ok(Json(state.store.usage().await?))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<Vec<PeerStatus>>, ApiError> {
    Ok(Json(net_status(&state).await?.peers))
}

async fn add_peer(
    State(state): State<ApiState>,
    Json(body): Json<AddPeer>,
) -> Result<Json<PeerAdded>, ApiError> {
    let addr = crate::config::parse_multiaddr(body.addr.trim())
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    // Remember first: a peer that is dialled but not saved would silently vanish on restart.
    let saved = addr.clone();
    change_config(&state, move |path| {
        crate::config::add_static_peer(path, &saved)
    })
    .await?;
    let added = state
        .net
        .add_static_peer(addr.clone())
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(PeerAdded {
        addr: addr.to_string(),
        added,
    }))
}

async fn block_peer(
    State(state): State<ApiState>,
    Json(body): Json<BlockPeer>,
) -> Result<Json<BlockPeer>, ApiError> {
    let peer = peer_id_from(&body.peer_id)?;
    // Remember first, so a block survives a restart even if the daemon stops right after.
    let added = change_config(&state, move |path| {
        crate::config::add_blocked_peer(path, &peer)
    })
    .await?;
    let newly = state.net.block_peer(peer).await.map_err(net_gone)?;
    Ok(Json(BlockPeer {
        peer_id: peer.to_string(),
        blocked: added || newly,
    }))
}

async fn unblock_peer(
    State(state): State<ApiState>,
    Json(body): Json<UnblockPeer>,
) -> Result<Json<UnblockPeer>, ApiError> {
    let peer = peer_id_from(&body.peer_id)?;
    // Forget first, so the unblock survives a restart.
    let removed = change_config(&state, move |path| {
        crate::config::remove_blocked_peer(path, &peer)
    })
    .await?;
    let was = state.net.unblock_peer(peer).await.map_err(net_gone)?;
    Ok(Json(UnblockPeer {
        peer_id: peer.to_string(),
        unblocked: removed || was,
    }))
}

/// Forgets a static peer: out of `peers` in the config (so a restart does not bring it back)
/// and no longer dialled. An open connection stays; `block` refuses a peer.
async fn remove_peer(
    State(state): State<ApiState>,
    Json(body): Json<RemovePeer>,
) -> Result<Json<PeerRemoved>, ApiError> {
    let target = body.peer.trim().to_owned();
    let in_config = {
        let target = target.clone();
        change_config(&state, move |path| {
            crate::config::remove_static_peers(path, &target)
        })
        .await?
    };
    let dialled = state
        .net
        .remove_static(target.clone())
        .await
        .map_err(net_gone)?;
    let mut removed = in_config;
    for addr in dialled {
        if !removed.contains(&addr) {
            removed.push(addr);
        }
    }
    if removed.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no configured peer is `{target}` (give an address from `peers` or a peer id)"),
        ));
    }
    Ok(Json(PeerRemoved { removed }))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
