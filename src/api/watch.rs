//! `meshsync status --watch`: the status headlines, live.
//!
//! On a terminal, one progress bar per share (how much of what it should hold is here) and one
//! per connected member that has told us its progress, redrawn every interval by `indicatif`.
//! Anywhere else (a pipe, a file) a bar means nothing, so each share's headline is printed with
//! the time whenever it changes: a script or a person tailing it sees every change once.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Status;
use super::text;
use crate::engine::ShareStatus;

/// Bars are drawn in thousandths, so completion shows to one decimal.
const BAR_SCALE: u64 = 1000;

/// One line of the live view.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What the line is about: a share id, or a share id and a member's peer id.
    pub key: String,
    /// The text shown.
    pub message: String,
    /// How far along, from 0 to 1.
    pub done: f64,
}

/// The rows for the shares: each share, then each of its connected members that reported.
pub fn rows(shares: &[ShareStatus]) -> Vec<Row> {
    let mut rows = Vec::new();
    for share in shares {
        rows.push(Row {
            key: share.id.clone(),
            message: text::headline(share),
            done: share_done(share),
        });
        for member in share.member_status.iter().filter(|m| m.connected) {
            let Some(completion) = member.completion else {
                continue;
            };
            rows.push(Row {
                key: format!("{}/{}", share.id, member.peer_id),
                message: format!(
                    "  {}: {completion:.1} %{}",
                    text::member_name(member),
                    text::to_go(member)
                ),
                done: completion / 100.0,
            });
        }
    }
    rows
}

/// How much of what the share should hold is here: by bytes for folders, whole otherwise.
fn share_done(share: &ShareStatus) -> f64 {
    match &share.folder {
        Some(folder) if folder.needed_files > 0 || folder.needed_bytes > 0 => {
            let total = folder.file_bytes.saturating_add(folder.needed_bytes);
            if total == 0 {
                0.0
            } else {
                folder.file_bytes as f64 / total as f64
            }
        }
        _ => 1.0,
    }
}

/// Runs the live view until the process is stopped: `fetch` gets the status each `interval`.
/// `terminal` chooses bars over printed changes.
pub fn run(
    mut fetch: impl FnMut() -> anyhow::Result<Status>,
    interval: Duration,
    terminal: bool,
) -> anyhow::Result<()> {
    let mut view: Box<dyn View> = if terminal {
        Box::new(Bars::new())
    } else {
        Box::new(Changes::default())
    };
    loop {
        match fetch() {
            Ok(status) => view.show(&rows(&status.shares))?,
            Err(e) => view.show(&[Row {
                key: "daemon".into(),
                message: format!("cannot get the status: {e:#}"),
                done: 0.0,
            }])?,
        }
        std::thread::sleep(interval);
    }
}

/// A way to show rows.
trait View {
    fn show(&mut self, rows: &[Row]) -> std::io::Result<()>;
}

/// Progress bars, one per row, kept by key.
struct Bars {
    multi: MultiProgress,
    bars: Vec<(String, ProgressBar)>,
    style: ProgressStyle,
}

impl Bars {
    fn new() -> Self {
        let style = ProgressStyle::with_template("[{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("=> ");
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: Vec::new(),
            style,
        }
    }
}

impl View for Bars {
    fn show(&mut self, rows: &[Row]) -> std::io::Result<()> {
        let same = rows.len() == self.bars.len()
            && rows.iter().zip(&self.bars).all(|(r, (k, _))| r.key == *k);
        if !same {
            // Shares or members came or went: rebuild in the new order.
            for (_, bar) in self.bars.drain(..) {
                self.multi.remove(&bar);
            }
            for row in rows {
                let bar = self.multi.add(ProgressBar::new(BAR_SCALE));
                bar.set_style(self.style.clone());
                self.bars.push((row.key.clone(), bar));
            }
        }
        for (row, (_, bar)) in rows.iter().zip(&self.bars) {
            bar.set_position((row.done.clamp(0.0, 1.0) * BAR_SCALE as f64) as u64);
            bar.set_message(row.message.clone());
        }
        Ok(())
    }
}

/// Printed lines, one per row whose text changed.
#[derive(Default)]
struct Changes {
    last: HashMap<String, String>,
}

impl View for Changes {
    fn show(&mut self, rows: &[Row]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        for row in rows {
            if self.last.get(&row.key) != Some(&row.message) {
                let now = crate::timefmt::rfc3339(std::time::SystemTime::now());
                writeln!(out, "{now} {}", row.message)?;
                self.last.insert(row.key.clone(), row.message.clone());
            }
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syncing_folder_and_a_lagging_member_show_how_far_each_is() {
        let share: ShareStatus = serde_json::from_value(serde_json::json!({
            "id": "ab", "name": "photos", "kind": "folder", "entries": 4, "root": "00",
            "members": ["12D3KooWpeer"], "bytes_sent": 0, "bytes_received": 0, "sessions": 1,
            "state": "syncing", "reason": null, "last_error": null,
            "folder": {
                "path": "/p", "state": "syncing", "needed_files": 1, "needed_bytes": 300,
                "fetched_bytes": 0, "served_bytes": 0, "rate_bytes_per_sec": 0.0,
                "bad_chunks": 0, "refused": 0, "local_entries": 3, "files": 3,
                "file_bytes": 100, "scans": 1, "last_error": null
            },
            "member_status": [
                {"peer_id": "12D3KooWpeer", "connected": true, "last_seen_ms": null,
                 "name": "laptop", "completion": 50.0, "needed_files": 2, "needed_bytes": 50},
                {"peer_id": "12D3KooWgone", "connected": false, "last_seen_ms": 1,
                 "completion": 10.0, "needed_files": 9, "needed_bytes": 90}
            ]
        }))
        .unwrap();
        let rows = rows(&[share]);
        assert_eq!(rows.len(), 2, "gone members get no bar: {rows:?}");
        assert_eq!(rows[0].done, 0.25);
        assert!(
            rows[0]
                .message
                .starts_with("photos: syncing, 300 B in 1 file still needed")
        );
        assert_eq!(rows[1].key, "ab/12D3KooWpeer");
        assert_eq!(rows[1].message, "  laptop: 50.0 % (50 B in 2 files to go)");
        assert_eq!(rows[1].done, 0.5);
    }
}
