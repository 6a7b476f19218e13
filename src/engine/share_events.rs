//! The events the engine itself sees: records that changed (here or at a peer), and shares
//! whose state, reason or last error changed. Folder actors emit their own file events.
//!
//! The same poll hands the engine our progress with each share when it changed (and every
//! [`PROGRESS_REFRESH`]), which it tells members.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::EngineHandle;
use super::progress::Progress;
use super::status::{ShareStatus, SyncState};
use crate::events::{Event, EventType, Events};
use crate::store::{Change, Origin, ShareKind, ShareState};

/// How often share states are compared with the last ones seen while anything happens: a
/// state that lasts shorter than this may not show as an event.
pub const STATE_POLL: Duration = Duration::from_secs(1);
/// The longest pause between polls while nothing happens: every share settled (not scanning or
/// syncing), nothing changed at the last poll and no event since. Any event (a record or file
/// changed, a peer came or went) brings the next poll within [`STATE_POLL`]; a change no event
/// announces (a folder starting a scan, the breaker holding) shows within this. Polling every
/// second in an idle mesh was a sixth of its wake-ups.
pub const STATE_POLL_QUIET: Duration = Duration::from_secs(5);
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

/// Compares share states every [`STATE_POLL`] (every [`STATE_POLL_QUIET`] while nothing
/// happens) and emits `share_state` and `error` events, until the engine stops.
pub(super) async fn watch_states(engine: EngineHandle, events: Events) {
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut handed: HashMap<crate::store::ShareId, (Progress, tokio::time::Instant)> =
        HashMap::new();
    let mut live = events.subscribe(None).live;
    let mut quiet = false;
    loop {
        tokio::time::sleep(STATE_POLL).await;
        if quiet && !happened(&mut live) {
            let rest = tokio::time::sleep(STATE_POLL_QUIET - STATE_POLL);
            tokio::select! {
                _ = rest => {}
                _ = next_happening(&mut live) => {}
            }
        }
        let Ok(status) = engine.states().await else {
            return;
        };
        let mut changed = status.shares.len() != seen.len();
        let mut now = HashMap::with_capacity(status.shares.len());
        let mut handed_now = HashMap::with_capacity(status.shares.len());
        for share in &status.shares {
            let current = Seen::of(share);
            let before = seen.get(&share.id);
            changed |= before != Some(&current);
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
                        changed |= handed.get(&id).is_none_or(|(last, _)| *last != progress);
                        engine.own_progress(id, progress).await;
                        (progress, at)
                    }
                };
                handed_now.insert(id, kept);
            }
        }
        let settled = status
            .shares
            .iter()
            .all(|share| !matches!(share.state, SyncState::Scanning | SyncState::Syncing));
        quiet = settled && !changed;
        seen = now;
        handed = handed_now;
    }
}

/// Whether an event other than the poll's own was emitted since `live` was last read.
fn happened(live: &mut broadcast::Receiver<Arc<Event>>) -> bool {
    let mut any = false;
    loop {
        match live.try_recv() {
            Ok(event) => any |= !is_the_polls_own(&event),
            Err(TryRecvError::Lagged(_)) => any = true,
            Err(TryRecvError::Empty) => return any,
            // The stream is gone with the daemon: the poll ends at its next call.
            Err(TryRecvError::Closed) => return true,
        }
    }
}

/// Completes at the next event other than the poll's own.
async fn next_happening(live: &mut broadcast::Receiver<Arc<Event>>) {
    loop {
        match live.recv().await {
            Ok(event) if is_the_polls_own(&event) => continue,
            Ok(_) | Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// The events this poll emits itself: they must not wake it.
fn is_the_polls_own(event: &Event) -> bool {
    matches!(event.kind, EventType::ShareState | EventType::Error)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_polls_own_events_do_not_wake_it_and_any_other_does() {
        let events = Events::default();
        let mut live = events.subscribe(None).live;
        assert!(!happened(&mut live), "nothing yet");

        events.emit(Event::new(EventType::ShareState, Some("s")).state("in_sync"));
        events.emit(Event::new(EventType::Error, Some("s")).message("disk full"));
        assert!(!happened(&mut live), "only the poll's own");

        events.emit(Event::new(EventType::PeerDisconnected, None).peer("p"));
        assert!(happened(&mut live));
        assert!(!happened(&mut live), "each event counts once");

        // Waiting: the poll's own events pass, the next other one ends the wait.
        events.emit(Event::new(EventType::ShareState, Some("s")).state("waiting"));
        events.emit(Event::new(EventType::RecordPut, Some("s")).key("k"));
        tokio::time::timeout(Duration::from_secs(10), next_happening(&mut live))
            .await
            .expect("the record's event ends the wait");
        events.emit(Event::new(EventType::ShareState, Some("s")).state("in_sync"));
        let waited =
            tokio::time::timeout(Duration::from_millis(50), next_happening(&mut live)).await;
        assert!(waited.is_err(), "the poll's own event does not end it");

        // Fallen behind, it cannot tell what it missed: counted as something happening.
        for _ in 0..=crate::events::LIVE_CAPACITY {
            events.emit(Event::new(EventType::ShareState, Some("s")).state("in_sync"));
        }
        assert!(happened(&mut live));
    }
}
