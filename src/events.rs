//! What happened, as a stream: files and records that changed (here or at a peer), conflicts,
//! peers coming and going, shares changing state, errors. `GET /v1/events` and
//! `meshsync events` read it.
//!
//! Every event gets an id, one more than the last, and is kept in a ring of the last
//! [`EVENT_BUFFER`] events, so that a reader that was away (a reconnecting browser, `?since=ID`)
//! gets what it missed as long as it is still held. Memory is bounded in total whatever the
//! number of readers: the ring, and one broadcast channel of [`LIVE_CAPACITY`] shared by all; a
//! reader that falls behind the channel picks up from the ring, and is told how many events it
//! lost if the ring no longer holds them. Ids start at 1 when the daemon starts.
//!
//! Emitting never waits and never fails: an event nobody reads is just dropped from the ring.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events kept for readers that resume (`?since=ID`) or fall behind.
pub const EVENT_BUFFER: usize = 4096;
/// Events in flight to live readers before a slow one is moved back to the ring.
pub const LIVE_CAPACITY: usize = 1024;

/// What kind of thing happened. The names are a contract (`type` in the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A path that was not there is now (a file, directory or symlink: see `entry`).
    FileAdded,
    /// A path's content, kind or mode changed.
    FileChanged,
    /// A path is gone.
    FileDeleted,
    /// A file went from `from` to `path`: reported after the `file_added` of the new path and
    /// the `file_deleted` of the old one, when the same author's add and delete of the same
    /// content came within [`crate::folder::RENAME_WINDOW`].
    FileRenamed,
    /// Two versions of a file were concurrent; the losing one was kept as `path` (a
    /// `.sync-conflict-…` copy).
    Conflict,
    /// A peer's change replaced or deleted a file here, and the file as it was is kept in the
    /// folder's versions (`message` says where; `meshsync share restore` puts it back).
    VersionKept,
    /// A record was written (or overwritten).
    RecordPut,
    /// A record was deleted.
    RecordDeleted,
    /// A peer connected.
    PeerConnected,
    /// A peer's last connection closed.
    PeerDisconnected,
    /// A share's `state` (or its `reason`) changed.
    ShareState,
    /// A share has a new `last_error`.
    Error,
    /// The reader fell so far behind that events were lost; `count` says how many.
    EventsMissed,
}

/// One event, as `GET /v1/events` and `meshsync events --json` give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing by one per event since the daemon started.
    pub id: u64,
    /// When it happened (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The share's local name, where one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// The path in a folder share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The key in a records share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The peer it is about or that caused it; `local` for a change made on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// That peer's device name, when it has one and is or was connected since the daemon
    /// started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_name: Option<String>,
    /// For `file_renamed`: the old path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// For paths: `file`, `directory` or `symlink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// For `share_state`: the new state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// For `share_state`: why (the share's `reason`); for `error`: the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For `events_missed`: how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl Event {
    /// An event of `kind` about `share`, with every other field empty; fill in what applies.
    pub fn new(kind: EventType, share: Option<&str>) -> Self {
        Event {
            id: 0,
            time: String::new(),
            kind,
            share: share.map(str::to_owned),
            path: None,
            key: None,
            peer: None,
            peer_name: None,
            from: None,
            entry: None,
            state: None,
            message: None,
            count: None,
        }
    }

    /// Sets `path`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets `key`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets `peer`.
    pub fn peer(mut self, peer: impl Into<String>) -> Self {
        self.peer = Some(peer.into());
        self
    }

    /// Sets `entry`.
    pub fn entry(mut self, entry: impl Into<String>) -> Self {
        self.entry = Some(entry.into());
        self
    }

    /// Sets `state`.
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// Sets `message`.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

impl Event {
    /// The event as one line of text: time, share, what, and the rest.
    pub fn line(&self) -> String {
        let what = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut line = format!("{}  {}", self.time, what);
        if let Some(share) = &self.share {
            line.push_str(&format!("  [{share}]"));
        }
        for value in [&self.path, &self.key, &self.state].into_iter().flatten() {
            line.push_str(&format!("  {value}"));
        }
        if let Some(from) = &self.from {
            line.push_str(&format!(" (from {from})"));
        }
        match (&self.peer, &self.peer_name) {
            (Some(peer), Some(name)) => line.push_str(&format!("  by {name} ({peer})")),
            (Some(peer), None) => line.push_str(&format!("  by {peer}")),
            _ => {}
        }
        if let Some(message) = &self.message {
            line.push_str(&format!(": {message}"));
        }
        if let Some(count) = self.count {
            line.push_str(&format!("  ({count})"));
        }
        line
    }
}

/// The daemon's event stream; cheap to clone, one per daemon.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
    /// Device names of peers by peer id, at most [`MAX_PEER_NAMES`]. A lock, not an actor:
    /// held for one map operation, never across an await.
    names: Mutex<HashMap<String, String>>,
}

/// Peer names remembered for events (beyond it, an arbitrary one is forgotten).
pub const MAX_PEER_NAMES: usize = 1024;

struct Ring {
    next_id: u64,
    events: VecDeque<Arc<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring {
                    next_id: 1,
                    events: VecDeque::with_capacity(EVENT_BUFFER),
                }),
                live: broadcast::channel(LIVE_CAPACITY).0,
                names: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// What a reader gets when it starts: the held events after the id it gave, how many it
/// missed before those, and a receiver for what comes next.
pub struct Subscription {
    /// Events after the reader's `since`, oldest first.
    pub backlog: Vec<Arc<Event>>,
    /// Events after `since` that the ring no longer holds.
    pub missed: u64,
    /// Everything emitted from now on.
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl Events {
    /// Remembers a peer's device name (or that it has none), for the events about it.
    pub fn name_peer(&self, peer: &str, name: Option<&str>) {
        let mut names = self.inner.names.lock().unwrap_or_else(|e| e.into_inner());
        match name {
            Some(name) => {
                if names.len() >= MAX_PEER_NAMES
                    && !names.contains_key(peer)
                    && let Some(any) = names.keys().next().cloned()
                {
                    names.remove(&any);
                }
                names.insert(peer.to_owned(), name.to_owned());
            }
            None => {
                names.remove(peer);
            }
        }
    }

    /// Records `event` (its id and time are set here) and passes it to live readers.
    pub fn emit(&self, mut event: Event) {
        if event.peer_name.is_none()
            && let Some(peer) = &event.peer
        {
            let names = self.inner.names.lock().unwrap_or_else(|e| e.into_inner());
            event.peer_name = names.get(peer).cloned();
        }
        let mut ring = self.lock();
        event.id = ring.next_id;
        event.time = crate::timefmt::rfc3339(SystemTime::now());
        ring.next_id += 1;
        let event = Arc::new(event);
        if ring.events.len() == EVENT_BUFFER {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the lock, so that a subscriber sees each event either in its backlog or
        // live, never both and never neither. No receivers is not an error here.
        let _ = self.inner.live.send(event);
    }

    /// Starts a reader after event `since` (`None`: only what comes next). A `since` beyond
    /// the last id is from before a restart: the reader gets everything held.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let ring = self.lock();
        let live = self.inner.live.subscribe();
        let (backlog, missed) = match since {
            None => (Vec::new(), 0),
            Some(since) => ring.after(since),
        };
        Subscription {
            backlog,
            missed,
            live,
        }
    }

    /// The held events after `since`, and how many after it are no longer held; for a reader
    /// that fell behind the live channel.
    pub fn catch_up(&self, since: u64) -> (Vec<Arc<Event>>, u64) {
        self.lock().after(since)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves the ring consistent (every change is a single
        // push or pop), so a poisoned lock is still usable.
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ring {
    fn after(&self, since: u64) -> (Vec<Arc<Event>>, u64) {
        let last = self.next_id - 1;
        let since = if since > last { 0 } else { since };
        let oldest = self.events.front().map_or(self.next_id, |e| e.id);
        let missed = oldest.saturating_sub(since + 1);
        let backlog = self
            .events
            .iter()
            .filter(|e| e.id > since)
            .cloned()
            .collect();
        (backlog, missed)
    }
}

/// The `events_missed` event a reader gets in place of `count` events it lost.
pub fn missed(count: u64) -> Event {
    let mut event = Event::new(EventType::EventsMissed, None);
    event.count = Some(count);
    event.time = crate::timefmt::rfc3339(SystemTime::now());
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(events: &Events, key: &str) {
        events.emit(Event::new(EventType::RecordPut, Some("s")).key(key));
    }

    #[test]
    fn ids_increase_by_one_and_a_reader_resumes_after_its_last() {
        let events = Events::default();
        for key in ["a", "b", "c"] {
            put(&events, key);
        }
        let sub = events.subscribe(Some(1));
        let ids: Vec<u64> = sub.backlog.iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(sub.missed, 0);
        let mut live = sub.live;
        put(&events, "d");
        assert_eq!(live.try_recv().unwrap().id, 4);
    }

    #[test]
    fn a_reader_without_since_gets_only_what_comes_next() {
        let events = Events::default();
        put(&events, "a");
        let mut sub = events.subscribe(None);
        assert!(sub.backlog.is_empty());
        put(&events, "b");
        assert_eq!(sub.live.try_recv().unwrap().key.as_deref(), Some("b"));
    }

    #[test]
    fn the_ring_is_bounded_and_says_what_was_lost() {
        let events = Events::default();
        for i in 0..EVENT_BUFFER + 10 {
            put(&events, &i.to_string());
        }
        let sub = events.subscribe(Some(0));
        assert_eq!(sub.backlog.len(), EVENT_BUFFER);
        assert_eq!(sub.missed, 10);
        assert_eq!(sub.backlog[0].id, 11);
    }

    #[test]
    fn a_since_from_before_a_restart_gets_everything_held() {
        let events = Events::default();
        put(&events, "a");
        let sub = events.subscribe(Some(9_999));
        assert_eq!(sub.backlog.len(), 1);
        assert_eq!(sub.missed, 0);
    }

    #[test]
    fn the_json_names_are_the_documented_ones() {
        let events = Events::default();
        events.emit(
            Event::new(EventType::FileAdded, Some("docs"))
                .path("a/b.txt")
                .peer("local")
                .entry("file"),
        );
        let sub = events.subscribe(Some(0));
        let json = serde_json::to_value(&*sub.backlog[0]).unwrap();
        assert_eq!(json["type"], "file_added");
        assert_eq!(json["id"], 1);
        assert_eq!(json["share"], "docs");
        assert_eq!(json["path"], "a/b.txt");
        assert_eq!(json["peer"], "local");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
        assert!(json.get("key").is_none());
    }
}
