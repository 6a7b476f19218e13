//! Shares and records over the control API.
//!
//! `{share}` in a path is the share's local name or its hex id. Values travel as `value` when
//! they are UTF-8 and as `value_base64` (standard alphabet, padded) otherwise; requests may use
//! either.
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | POST | `/v1/shares` | `{"name", "kind": "records" \| "folder", "path"}` | `{"id", "name", "token"}` |
//! | POST | `/v1/shares/join` | `{"token", "name", "kind", "path"}` | `{"id", "name"}` |
//! | GET | `/v1/shares` | | list of shares with members and byte counters |
//! | GET | `/v1/shares/{share}/token` | `?read_only=true` | `{"token", "read_only"}` (with current addresses) |
//! | POST | `/v1/shares/{share}/trust` | `{"add": [peer id…], "remove": [peer id…]}` | `{"trusted_peers"}` (empty: anyone with a token) |
//! | POST | `/v1/shares/{share}/pause` | | `{"share", "paused": true, "changed"}` (`changed` false if it already was) |
//! | POST | `/v1/shares/{share}/leave` | | `{"share", "left": true}`: no longer synced, its state forgotten; a folder's files stay |
//! | POST | `/v1/kv/{share}/put` | `{"key", "value" \| "value_base64"}` | `{"ok": true}` |
//! | POST | `/v1/kv/{share}/batch` | `{"records": [{"key", "value" \| "value_base64"}…]}` | `{"count"}` |
//! | POST | `/v1/kv/{share}/del` | `{"key"}` | `{"ok": true}` |
//! | GET | `/v1/kv/{share}/get?key=K` | | a [`RecordView`] with its conflicts; 404 if absent |
//! | GET | `/v1/kv/{share}/list?prefix=P` | | `[{"key", "value" \| "value_base64"}…]` in key order, streamed a page at a time |
//! | GET | `/v1/kv/{share}/watch?prefix=P` | | one JSON line per change, as it lands (streamed) |

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::broadcast;

use super::{ApiError, ApiState};
use crate::engine::{CreatedShare, EngineError, ShareStatus, TrustChange};
use crate::merge::{Payload, Version};
use crate::store::{Change, Origin, RecordRegister, ShareKind, ShareState, StoreError};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/shares", get(list_shares).post(create_share))
        .route("/v1/shares/join", post(join_share))
        .route("/v1/shares/{share}/token", get(share_token))
        .route("/v1/shares/{share}/trust", post(share_trust))
        .route("/v1/shares/{share}/pause", post(share_pause))
        .route("/v1/shares/{share}/leave", post(share_leave))
        .route("/v1/kv/{share}/put", post(put))
        .route("/v1/kv/{share}/batch", post(batch))
        .route("/v1/kv/{share}/del", post(del))
        .route("/v1/kv/{share}/get", get(get_record))
        .route("/v1/kv/{share}/list", get(list))
        .route("/v1/kv/{share}/watch", get(watch))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::UnknownShare(_) => StatusCode::NOT_FOUND,
            StoreError::NameTaken(_) | StoreError::AlreadyJoined(_) => StatusCode::CONFLICT,
            StoreError::Invalid(_) | StoreError::WrongKind(_) | StoreError::Merge { .. } => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(e) => e.into(),
            EngineError::Token(_) | EngineError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            EngineError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

/// Body of `POST /v1/shares`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateShare {
    /// Local name.
    pub name: String,
    /// What it holds.
    pub kind: ShareKind,
    /// For folders: the folder's absolute path (created if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
}

/// Body of `POST /v1/shares/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinShare {
    /// The token from `share create` or `share token`.
    pub token: String,
    /// Local name.
    pub name: String,
    /// What it holds; must match the token.
    pub kind: ShareKind,
    /// For folders: the folder's absolute path (created if missing; existing files are merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
}

/// A value in JSON: `value` when it is UTF-8, `value_base64` otherwise (neither for a deletion).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonValue {
    /// UTF-8 value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Any other value, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl JsonValue {
    /// The JSON form of `bytes`.
    pub fn of(bytes: &[u8]) -> JsonValue {
        match std::str::from_utf8(bytes) {
            Ok(text) => JsonValue {
                value: Some(text.to_owned()),
                value_base64: None,
            },
            Err(_) => JsonValue {
                value: None,
                value_base64: Some(STANDARD.encode(bytes)),
            },
        }
    }

    /// The bytes, or what is wrong with the JSON form.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.value, &self.value_base64) {
            (Some(text), None) => Ok(text.clone().into_bytes()),
            (None, Some(b64)) => STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("value_base64 is not base64: {e}")),
            (None, None) => Err("no value or value_base64".into()),
            (Some(_), Some(_)) => Err("give value or value_base64, not both".into()),
        }
    }
}

/// A record as sent to the API: the value as text or base64.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordInput {
    /// The key.
    pub key: String,
    /// The value.
    #[serde(flatten)]
    pub value: JsonValue,
}

/// Body of a batch put.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    /// The records.
    pub records: Vec<RecordInput>,
}

/// Body of a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyOnly {
    /// The key.
    pub key: String,
}

/// One record in `list`: exactly what every converged peer shows alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedRecord {
    /// The key.
    pub key: String,
    /// The value.
    #[serde(flatten)]
    pub value: JsonValue,
}

/// One version of a record, as shown by `get` and `watch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionView {
    /// The value (neither field for deletions).
    #[serde(flatten)]
    pub value: JsonValue,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// The peer that wrote it.
    pub origin: String,
    /// Its hybrid logical clock time, `millis.counter`.
    pub hlc: String,
}

/// A record with its concurrent losers, from `get` and `watch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordView {
    /// The key.
    pub key: String,
    /// The winning version.
    #[serde(flatten)]
    pub winner: VersionView,
    /// Concurrent versions that lost to the winner (kept until the key is written again).
    pub conflicts: Vec<VersionView>,
    /// For `watch`: who delivered the change (`local` or a peer id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

fn version_view(version: &Version<ByteBuf>) -> VersionView {
    let value = match version.payload() {
        Payload::Value(bytes) => JsonValue::of(bytes),
        Payload::Tombstone => JsonValue::default(),
    };
    let origin = PeerId::from_bytes(version.origin().as_bytes())
        .map(|p| p.to_string())
        .unwrap_or_else(|_| hex::encode(version.origin().as_bytes()));
    VersionView {
        value,
        deleted: version.is_tombstone(),
        origin,
        hlc: version.hlc().to_string(),
    }
}

/// The API view of a register (none if it holds nothing).
pub fn record_view(key: &[u8], register: &RecordRegister) -> Option<RecordView> {
    let winner = register.winner()?;
    Some(RecordView {
        key: String::from_utf8_lossy(key).into_owned(),
        winner: version_view(winner),
        conflicts: register.conflicts().iter().map(version_view).collect(),
        from: None,
    })
}

fn decode_input(record: RecordInput) -> Result<(Vec<u8>, Payload<ByteBuf>), ApiError> {
    let value = record.value.bytes().map_err(|m| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("key `{}`: {m}", record.key),
        )
    })?;
    crate::store::check_record(record.key.as_bytes(), Some(&value))?;
    Ok((
        record.key.into_bytes(),
        Payload::Value(ByteBuf::from(value)),
    ))
}

fn records_share(state: &ApiState, share: &str) -> Result<ShareState, ApiError> {
    let found = state.store.resolve(share)?;
    if found.meta.kind != ShareKind::Records {
        return Err(StoreError::WrongKind(share.to_owned()).into());
    }
    Ok(found)
}

async fn list_shares(State(state): State<ApiState>) -> Result<Json<Vec<ShareStatus>>, ApiError> {
    Ok(Json(state.engine.status().await?.shares))
}

async fn create_share(
    State(state): State<ApiState>,
    Json(body): Json<CreateShare>,
) -> Result<Json<CreatedShare>, ApiError> {
    Ok(Json(
        state
            .engine
            .create_share(body.name, body.kind, body.path)
            .await?,
    ))
}

async fn join_share(
    State(state): State<ApiState>,
    Json(body): Json<JoinShare>,
) -> Result<Json<CreatedShare>, ApiError> {
    Ok(Json(
        state
            .engine
            .join_share(body.token, body.name, body.kind, body.path)
            .await?,
    ))
}

/// Query of `GET /v1/shares/{share}/token`.
#[derive(Debug, Deserialize)]
struct TokenQuery {
    #[serde(default)]
    read_only: bool,
}

async fn share_token(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let token = state.engine.token(share, query.read_only).await?;
    Ok(Json(
        serde_json::json!({ "token": token, "read_only": query.read_only }),
    ))
}

async fn share_trust(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Json(change): Json<TrustChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let trusted = state.engine.trust(share, change).await?;
    Ok(Json(serde_json::json!({ "trusted_peers": trusted })))
}

async fn put(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Json(record): Json<RecordInput>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let share = records_share(&state, &share)?;
    let record = decode_input(record)?;
    state.store.put(share.meta.id, vec![record]).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

async fn batch(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Json(batch): Json<Batch>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let share = records_share(&state, &share)?;
    if batch.records.len() > crate::store::MAX_BATCH_RECORDS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} records in one batch; the limit is {}",
                batch.records.len(),
                crate::store::MAX_BATCH_RECORDS
            ),
        ));
    }
    let records = batch
        .records
        .into_iter()
        .map(decode_input)
        .collect::<Result<Vec<_>, _>>()?;
    let count = records.len();
    state.store.put(share.meta.id, records).await?;
    Ok(Json(serde_json::json!({ "count": count })))
}

async fn del(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Json(body): Json<KeyOnly>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let share = records_share(&state, &share)?;
    crate::store::check_record(body.key.as_bytes(), None)?;
    let existing = state
        .store
        .get(share.meta.id, body.key.clone().into_bytes())
        .await?;
    if existing.as_ref().is_none_or(|r| r.is_deleted()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no key `{}` in share `{}`", body.key, share.meta.name),
        ));
    }
    state
        .store
        .put(
            share.meta.id,
            vec![(body.key.into_bytes(), Payload::Tombstone)],
        )
        .await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// Query of `get`.
#[derive(Debug, Deserialize)]
struct GetQuery {
    key: String,
}

async fn get_record(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Query(query): Query<GetQuery>,
) -> Result<Json<RecordView>, ApiError> {
    let share = records_share(&state, &share)?;
    let register = state
        .store
        .get(share.meta.id, query.key.clone().into_bytes())
        .await?;
    register
        .as_ref()
        .filter(|r| !r.is_deleted())
        .and_then(|r| record_view(query.key.as_bytes(), r))
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no key `{}` in share `{}`", query.key, share.meta.name),
            )
        })
}

/// Query of `list` and `watch`.
#[derive(Debug, Deserialize)]
struct PrefixQuery {
    #[serde(default)]
    prefix: String,
}

/// Records a listing reads from the store at once: what it holds, whatever the share's size
/// (a listing of 10^7 records held them all, gigabytes, and kept the store thread busy for
/// its whole length).
pub const LIST_PAGE_RECORDS: usize = 1000;

/// A record as listed; `None` for a deleted one (its tombstone).
fn listed(key: &[u8], register: &RecordRegister) -> Option<ListedRecord> {
    Some(ListedRecord {
        key: String::from_utf8_lossy(key).into_owned(),
        value: JsonValue::of(register.value()?),
    })
}

/// Where a streamed listing stands.
struct Listing {
    store: crate::store::StoreHandle,
    share: crate::store::ShareId,
    prefix: Vec<u8>,
    /// The page read before answering, not sent yet.
    first: Option<Vec<crate::store::Entry>>,
    /// The last key sent (or skipped): the next page starts after it.
    after: Option<Vec<u8>>,
    /// A record was written already: the next one needs a comma.
    written: bool,
    done: bool,
}

impl Listing {
    /// The next piece of the answer's JSON array: `[` and the first page's records, then a
    /// page's records each, the last ending with `]`; an error ends the answer unfinished, so
    /// the client sees a broken answer, never a short list.
    async fn next_piece(mut self) -> Option<(Result<Bytes, std::io::Error>, Listing)> {
        if self.done {
            return None;
        }
        let mut out = Vec::new();
        let page = match self.first.take() {
            Some(page) => {
                out.push(b'[');
                page
            }
            None => {
                let after = self.after.clone();
                let read =
                    self.store
                        .list_page(self.share, self.prefix.clone(), after, LIST_PAGE_RECORDS);
                match read.await {
                    Ok(page) => page,
                    Err(e) => {
                        self.done = true;
                        let error = std::io::Error::other(format!("listing stopped: {e}"));
                        return Some((Err(error), self));
                    }
                }
            }
        };
        let last_page = page.len() < LIST_PAGE_RECORDS;
        for (key, register) in &page {
            let Some(record) = listed(key, register) else {
                continue;
            };
            if self.written {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &record).expect("a listed record always encodes");
            self.written = true;
        }
        self.after = page.into_iter().next_back().map(|(key, _)| key);
        if last_page {
            out.push(b']');
            self.done = true;
        }
        Some((Ok(Bytes::from(out)), self))
    }
}

/// `GET /v1/kv/{share}/list`: a JSON array, streamed [`LIST_PAGE_RECORDS`] at a time, in key
/// order, each key once. Pages are read one after the other, not from one snapshot: a record
/// written while a long listing runs shows if its key comes after the page being read.
async fn list(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Query(query): Query<PrefixQuery>,
) -> Result<Response, ApiError> {
    let share = records_share(&state, &share)?;
    let prefix = query.prefix.into_bytes();
    // The first page before answering: a store that cannot list says so with an error status.
    let first = state
        .store
        .list_page(share.meta.id, prefix.clone(), None, LIST_PAGE_RECORDS)
        .await?;
    let listing = Listing {
        store: state.store.clone(),
        share: share.meta.id,
        prefix,
        first: Some(first),
        after: None,
        written: false,
        done: false,
    };
    let pieces = futures::stream::unfold(listing, Listing::next_piece);
    Ok((
        [("content-type", "application/json")],
        Body::from_stream(pieces),
    )
        .into_response())
}

async fn share_pause(
    State(state): State<ApiState>,
    Path(share): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let changed = state.engine.set_paused(share.clone(), true).await?;
    Ok(Json(serde_json::json!({
        "share": share,
        "paused": true,
        "changed": changed,
    })))
}

async fn share_leave(
    State(state): State<ApiState>,
    Path(share): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = state.engine.leave(share).await?;
    Ok(Json(serde_json::json!({ "share": name, "left": true })))
}

fn watch_line(change: &Change) -> Option<String> {
    let mut view = record_view(&change.key, &change.register)?;
    view.from = Some(match &change.origin {
        Origin::Local => "local".into(),
        Origin::Remote(peer) => peer.to_string(),
    });
    let mut line = serde_json::to_string(&view).ok()?;
    line.push('\n');
    Some(line)
}

async fn watch(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Query(query): Query<PrefixQuery>,
) -> Result<Response, ApiError> {
    let share = records_share(&state, &share)?;
    let receiver = state.store.watch();
    let id = share.meta.id;
    let prefix = query.prefix.into_bytes();
    let stopping = state.stopping.clone();
    let lines =
        futures::stream::unfold((receiver, stopping), move |(mut receiver, mut stopping)| {
            let prefix = prefix.clone();
            async move {
                loop {
                    let change = tokio::select! {
                        change = receiver.recv() => change,
                        _ = stopping.wait_for(|stop| *stop) => return None,
                    };
                    match change {
                        Ok(change) if change.share == id && change.key.starts_with(&prefix) => {
                            if let Some(line) = watch_line(&change) {
                                let line = Ok::<Bytes, Infallible>(Bytes::from(line));
                                return Some((line, (receiver, stopping)));
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            let line = format!("{{\"lagged\":{missed}}}\n");
                            return Some((Ok(Bytes::from(line)), (receiver, stopping)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
    Ok((
        [("content-type", "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
