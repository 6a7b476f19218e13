//! The events the engine itself sees: records that changed (here or at a peer), and shares
//! whose state, reason or last error changed. Folder actors emit their own file events.
//!
//! The same poll hands the engine our progress with each share when it changed (and every
//! [`PROGRESS_REFRESH`]), which it tells members.

use std::collections::HashMap;
use std::time::Duration;

use super::EngineHandle;
use super::progress::Progress;
use super::status::{ShareStatus, SyncState};
use crate::events::{Event, EventType, Events};
use crate::store::{Change, Origin, ShareKind, ShareState};

/// How often share states are compared with the last ones seen: a state that lasts shorter
/// than this may not show as an event.
pub const STATE_POLL: Duration = Duration::from_secs(1);
/// How often our progress with a share is handed to the engine while it stays the same, so a
/// member that could not be told it is told again. (The engine tells a member that connects
/// itself; handing it over every poll was a wake-up of the engine per share and second.)
pub const PROGRESS_REFRESH: Duration = Duration::from_secs(30);

/// `record_put` or `record_deleted` for a change to a records share; folder entries are
/// reported by their folder, once they are on disk.
pub(super) fn record_event(share: &ShareState, change: &Change) -> Option<Event> {
    if share.meta.kind != ShareKind::Records {
        return None;
    }
    let deleted = change.register.winner().is_none_or(|v| v.is_tombstone());
    let kind = if deleted {
        EventType::RecordDeleted
    } else {
        EventType::RecordPut
    };
    let peer = match change.origin {
        Origin::Local => "local".to_owned(),
        Origin::Remote(peer) => peer.to_string(),
    };
    Some(
        Event::new(kind, Some(&share.meta.name))
            .key(String::from_utf8_lossy(&change.key))
            .peer(peer),
    )
}

/// What of a share's status is reported when it changes.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    state: String,
    reason: Option<String>,
    error_at: Option<String>,
}

impl Seen {
    fn of(share: &ShareStatus) -> Self {
        Seen {
            state: state_name(share),
            reason: share.reason.clone(),
            error_at: share.last_error.as_ref().map(|e| e.at.clone()),
        }
    }
}

fn state_name(share: &ShareStatus) -> String {
    serde_json::to_value(share.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Compares share states every [`STATE_POLL`] and emits `share_state` and `error` events,
/// until the engine stops.
pub(super) async fn watch_states(engine: EngineHandle, events: Events) {
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut handed: HashMap<crate::store::ShareId, (Progress, tokio::time::Instant)> =
        HashMap::new();
    loop {
        tokio::time::sleep(STATE_POLL).await;
        let Ok(status) = engine.states().await else {
            return;
        };
        let mut now = HashMap::with_capacity(status.shares.len());
        let mut handed_now = HashMap::with_capacity(status.shares.len());
        for share in &status.shares {
            let current = Seen::of(share);
            let before = seen.get(&share.id);
            for event in changes(before, &current, share) {
                events.emit(event);
            }
            now.insert(share.id.clone(), current);
            if let Some((id, progress)) = own_progress(share) {
                let at = tokio::time::Instant::now();
                let kept = match handed.get(&id) {
                    Some(&(last, when))
                        if last == progress && at.duration_since(when) < PROGRESS_REFRESH =>
                    {
                        (last, when)
                    }
                    _ => {
                        engine.own_progress(id, progress).await;
                        (progress, at)
                    }
                };
                handed_now.insert(id, kept);
            }
        }
        seen = now;
        handed = handed_now;
    }
}

/// Our progress with a share, for its members (none while it is paused).
fn own_progress(share: &ShareStatus) -> Option<(crate::store::ShareId, Progress)> {
    if share.state == SyncState::Paused {
        return None;
    }
    let id = hex::decode(&share.id).ok()?.try_into().ok()?;
    let root = hex::decode(&share.root).ok()?.try_into().ok()?;
    let (files, bytes) = share
        .folder
        .as_ref()
        .map_or((0, 0), |f| (f.needed_files, f.needed_bytes));
    Some((id, Progress { root, files, bytes }))
}

/// The events that say how `share` moved from `before` to `current`.
fn changes(before: Option<&Seen>, current: &Seen, share: &ShareStatus) -> Vec<Event> {
    let mut out = Vec::new();
    let name = Some(share.name.as_str());
    if before.is_none_or(|b| b.state != current.state || b.reason != current.reason) {
        let mut event = Event::new(EventType::ShareState, name).state(current.state.clone());
        event.message = current.reason.clone();
        out.push(event);
    }
    let new_error =
        current.error_at.is_some() && before.is_none_or(|b| b.error_at != current.error_at);
    if new_error && let Some(error) = &share.last_error {
        out.push(Event::new(EventType::Error, name).message(error.message.clone()));
    }
    out
}
