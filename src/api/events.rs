//! `GET /v1/events`: what happened, as server-sent events.
//!
//! Each SSE message has the event's `id` as its id and the event's JSON as its data (no SSE
//! event name, so a browser's `EventSource.onmessage` gets them all). `?since=ID`, or the
//! `Last-Event-ID` header a reconnecting browser sends, first replays the held events after
//! `ID`; an `events_missed` event says how many were no longer held. `?share=NAME` keeps only
//! that share's events. The stream ends when the daemon stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::ApiState;
use crate::events::{self, Event, Events};

/// A comment line this often keeps proxies and idle-closing clients from dropping the stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/events", get(stream))
}

/// Query of `GET /v1/events`.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    /// Replay the held events after this id.
    pub since: Option<u64>,
    /// Only this share's events (its local name).
    pub share: Option<String>,
}

async fn stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let since = query.since.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    let reader = Reader::start(state.events.clone(), since, query.share);
    let stopping = state.stopping.clone();
    let stream = futures::stream::unfold(
        (reader, stopping),
        |(mut reader, mut stopping)| async move {
            let event = tokio::select! {
                event = reader.next() => event?,
                _ = stopping.wait_for(|stop| *stop) => return None,
            };
            let sse = SseEvent::default()
                .json_data(&*event)
                .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"));
            let sse = if event.id == 0 {
                sse
            } else {
                sse.id(event.id.to_string())
            };
            Some((Ok(sse), (reader, stopping)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// One reader's place in the stream: events to send first, then live ones.
struct Reader {
    events: Events,
    pending: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    /// The last id sent (or skipped by the filter).
    last: u64,
    share: Option<String>,
}

impl Reader {
    fn start(events: Events, since: Option<u64>, share: Option<String>) -> Self {
        let sub = events.subscribe(since);
        let mut pending = VecDeque::with_capacity(sub.backlog.len() + 1);
        if sub.missed > 0 {
            pending.push_back(Arc::new(events::missed(sub.missed)));
        }
        let last = sub.backlog.last().map_or(0, |e| e.id);
        pending.extend(sub.backlog);
        Reader {
            events,
            pending,
            live: sub.live,
            last,
            share,
        }
    }

    /// The next event for this reader; `None` when the stream is over.
    async fn next(&mut self) -> Option<Arc<Event>> {
        loop {
            let event = match self.pending.pop_front() {
                Some(event) => event,
                None => match self.live.recv().await {
                    Ok(event) if event.id <= self.last => continue,
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the live channel: take the rest from the ring.
                        let (held, missed) = self.events.catch_up(self.last);
                        if missed > 0 {
                            self.pending.push_back(Arc::new(events::missed(missed)));
                        }
                        self.pending.extend(held);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            if event.id != 0 {
                self.last = event.id;
            }
            let wanted = match &self.share {
                None => true,
                Some(share) => event.share.as_deref() == Some(share) || event.id == 0,
            };
            if wanted {
                return Some(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    fn put(events: &Events, share: &str, key: &str) {
        events.emit(Event::new(EventType::RecordPut, Some(share)).key(key));
    }

    #[tokio::test]
    async fn a_reader_gets_the_backlog_then_live_events_in_order_once() {
        let events = Events::default();
        put(&events, "a", "1");
        put(&events, "a", "2");
        let mut reader = Reader::start(events.clone(), Some(0), None);
        put(&events, "a", "3");
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(reader.next().await.unwrap().id);
        }
        assert_eq!(ids, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_reader_behind_the_live_channel_catches_up_from_the_ring() {
        let events = Events::default();
        let mut reader = Reader::start(events.clone(), None, None);
        let total = events::LIVE_CAPACITY as u64 + 50;
        for i in 0..total {
            put(&events, "a", &i.to_string());
        }
        for want in 1..=total {
            assert_eq!(reader.next().await.unwrap().id, want);
        }
    }

    #[tokio::test]
    async fn a_share_filter_keeps_that_share_only() {
        let events = Events::default();
        put(&events, "a", "1");
        put(&events, "b", "2");
        put(&events, "a", "3");
        let mut reader = Reader::start(events.clone(), Some(0), Some("a".into()));
        assert_eq!(reader.next().await.unwrap().id, 1);
        assert_eq!(reader.next().await.unwrap().id, 3);
    }
}
