//! `GET /metrics`: the daemon's state in the Prometheus text format (OpenMetrics), every name
//! prefixed `meshsync_`. Built at each scrape from the same status `GET /v1/status` gives, so the
//! two never disagree. It needs the API token like every endpoint but `/health`; Prometheus
//! sends it with `authorization: {credentials_file: <home>/api-token}`.

use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{ApiError, ApiState, Status};
use crate::engine::status::SyncState;

/// The content type Prometheus asks for and this format is.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let status = super::gather_status(&state).await?;
    let text = render(&status, resident_bytes(), Some(state.net.libp2p_metrics()))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([("content-type", CONTENT_TYPE)], text).into_response())
}

type Labels = Vec<(&'static str, String)>;

/// A family of gauges by share (and more labels), registered under `name`.
fn gauges(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// A family of counters by share, registered under `name` (`_total` is added).
fn counters(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Every state a share can be in, for the one-hot `meshsync_share_state` gauge.
const STATES: [SyncState; 7] = [
    SyncState::Scanning,
    SyncState::Syncing,
    SyncState::InSync,
    SyncState::Waiting,
    SyncState::Paused,
    SyncState::Held,
    SyncState::Error,
];

fn state_name(state: SyncState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The metrics text for `status`, with the process's resident memory if known, followed by
/// libp2p's own metrics (`meshsync_libp2p_…`) where given.
pub fn render(
    status: &Status,
    resident: Option<u64>,
    libp2p: Option<&Registry>,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("meshsync");
    gauge(
        &mut registry,
        "peers_connected",
        "Peers connected now",
        status.peers.len() as i64,
    );
    gauge(
        &mut registry,
        "peers_banned",
        "Peers refused for a while after sending content that did not match its hash",
        status.banned.len() as i64,
    );
    let guards = &status.guards;
    gauge(
        &mut registry,
        "inbound_buffered_bytes",
        "Bytes buffered for requests still arriving, all peers together",
        clamp(guards.inbound_buffered_bytes),
    );
    gauge(
        &mut registry,
        "inbound_buffer_limit_bytes",
        "The limit of those bytes (inbound_buffer_total)",
        clamp(guards.inbound_buffer_limit),
    );
    counter(
        &mut registry,
        "refused_connections",
        "Connections refused by the peer limits and lists",
        guards.refused_connections,
    );
    let notices = &status.change_notices;
    gauge(
        &mut registry,
        "change_notice_backlog",
        "Store change notices the daemon's slowest reader (engine, folder) has not taken",
        clamp(notices.backlog),
    );
    gauge(
        &mut registry,
        "change_notice_backlog_limit",
        "The backlog past which peers' merges wait (CHANGE_BACKLOG_MAX)",
        clamp(notices.backlog_limit),
    );
    gauge(
        &mut registry,
        "merges_waiting",
        "Merges of peers' entries waiting now for the change notice backlog to shrink",
        clamp(notices.merges_waiting),
    );
    counter(
        &mut registry,
        "merges_waited",
        "Merges of peers' entries that waited for the change notice backlog",
        notices.merges_waited,
    );
    if let Some(bytes) = resident {
        gauge(
            &mut registry,
            "resident_memory_bytes",
            "Resident memory of the daemon (RSS)",
            clamp(bytes),
        );
    }

    let state = gauges(
        &mut registry,
        "share_state",
        "1 for the state each share is in, 0 for the others",
    );
    let entries = gauges(
        &mut registry,
        "share_entries",
        "Entries a share holds (deleted ones included)",
    );
    let members = gauges(
        &mut registry,
        "share_members_connected",
        "Members of a share connected now",
    );
    let sent = counters(
        &mut registry,
        "share_sent_bytes",
        "Bytes sent for a share (announcements, sessions, answers)",
    );
    let received = counters(
        &mut registry,
        "share_received_bytes",
        "Bytes received for a share",
    );
    let sessions = counters(
        &mut registry,
        "share_sessions",
        "Reconciliation sessions run for a share",
    );
    let refused = counters(
        &mut registry,
        "share_refused_entries",
        "Entries refused from peers that may not write",
    );
    let needed_files = gauges(
        &mut registry,
        "folder_needed_files",
        "Files a folder still has to fetch or write",
    );
    let needed_bytes = gauges(
        &mut registry,
        "folder_needed_bytes",
        "Bytes a folder still has to fetch",
    );
    let fetched = counters(
        &mut registry,
        "folder_fetched_bytes",
        "Chunk bytes a folder fetched from members",
    );
    let served = counters(
        &mut registry,
        "folder_served_bytes",
        "Chunk bytes a folder served to members",
    );
    let bad_chunks = counters(
        &mut registry,
        "folder_bad_chunks",
        "Chunks refused because they did not match their hash",
    );
    let scans = counters(&mut registry, "folder_scans", "Scans of a folder run");
    let hashed_files = counters(
        &mut registry,
        "folder_hashed_files",
        "Files read by scans (new or changed since the last scan)",
    );
    let hashed_bytes = counters(&mut registry, "folder_hashed_bytes", "Bytes read by scans");
    let deletes_waiting = gauges(
        &mut registry,
        "folder_deletes_waiting",
        "Local deletes waiting to be sent",
    );
    let unsyncable = gauges(
        &mut registry,
        "folder_unsyncable_paths",
        "Local paths that cannot be synced",
    );
    let watching = gauges(
        &mut registry,
        "folder_watching",
        "1 while a file watcher sees the folder's changes as they happen, 0 while only rescans do",
    );
    let verifying = gauges(
        &mut registry,
        "folder_verifying",
        "1 while the periodic verification walk (what catches changes the watcher missed) runs",
    );
    let completion = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "share_member_completion_percent",
        "How much of our view of a share a connected member holds (0 to 100)",
        completion.clone(),
    );
    for share in &status.shares {
        let labels: Labels = vec![("share", share.name.clone())];
        for member in share.member_status.iter().filter(|m| m.connected) {
            if let Some(percent) = member.completion {
                let mut with_peer = labels.clone();
                with_peer.push(("peer", member.peer_id.clone()));
                completion.get_or_create(&with_peer).set(percent);
            }
        }
        for candidate in STATES {
            let mut with_state = labels.clone();
            with_state.push(("state", state_name(candidate)));
            state
                .get_or_create(&with_state)
                .set(i64::from(candidate == share.state));
        }
        entries.get_or_create(&labels).set(clamp(share.entries));
        members
            .get_or_create(&labels)
            .set(share.members.len() as i64);
        sent.get_or_create(&labels).inc_by(share.bytes_sent);
        received.get_or_create(&labels).inc_by(share.bytes_received);
        sessions.get_or_create(&labels).inc_by(share.sessions);
        refused.get_or_create(&labels).inc_by(share.refused_entries);
        if let Some(folder) = &share.folder {
            needed_files
                .get_or_create(&labels)
                .set(clamp(folder.needed_files));
            needed_bytes
                .get_or_create(&labels)
                .set(clamp(folder.needed_bytes));
            fetched.get_or_create(&labels).inc_by(folder.fetched_bytes);
            served.get_or_create(&labels).inc_by(folder.served_bytes);
            bad_chunks.get_or_create(&labels).inc_by(folder.bad_chunks);
            scans.get_or_create(&labels).inc_by(folder.scans);
            hashed_files
                .get_or_create(&labels)
                .inc_by(folder.hashed_files);
            hashed_bytes
                .get_or_create(&labels)
                .inc_by(folder.hashed_bytes);
            deletes_waiting
                .get_or_create(&labels)
                .set(clamp(folder.deletes_waiting));
            unsyncable
                .get_or_create(&labels)
                .set(clamp(folder.unsyncable_count));
            watching
                .get_or_create(&labels)
                .set(i64::from(folder.watching));
            verifying
                .get_or_create(&labels)
                .set(i64::from(folder.verifying));
        }
    }
    let mut text = String::new();
    encode_registry(&mut text, &registry)?;
    if let Some(libp2p) = libp2p {
        encode_registry(&mut text, libp2p)?;
    }
    encode_eof(&mut text)?;
    Ok(text)
}

/// Resident memory from `/proc/self/statm` (pages × page size), where there is one.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}
