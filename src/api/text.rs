//! Status as a person reads it: one line per share that answers "is it synced, and if not,
//! why?", and sizes and rates in human units. The CLI prints these; they are pure functions of
//! the status the API gives, so scripts read `--json` instead.

use crate::engine::ShareStatus;
use crate::engine::status::SyncState;

/// `bytes` in the largest binary unit that keeps a number ≥ 1: `512 B`, `1.5 KiB`, `3.4 GiB`.
pub fn bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration in seconds as `45 s`, `12 min`, `3 h`.
pub fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 90.0 * 60.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.0} h", seconds / 3600.0)
    }
}

/// The one line that says where `share` stands: `docs: in sync with 2 of 2 members`,
/// `photos: syncing, 1.2 GiB in 35 files still needed, 80 MiB/s, ~16 s left`, `notes: waiting
/// — no member reachable since …`, `docs: error — disk full — …`.
pub fn headline(share: &ShareStatus) -> String {
    let connected = share.member_status.iter().filter(|m| m.connected).count();
    let known = share.member_status.len().max(connected);
    let why = |what: &str| match &share.reason {
        Some(reason) => format!("{}: {what} — {reason}", share.name),
        None => format!("{}: {what}", share.name),
    };
    match share.state {
        SyncState::InSync => format!(
            "{}: in sync with {connected} of {known} member{}",
            share.name,
            if known == 1 { "" } else { "s" }
        ),
        SyncState::Syncing => {
            let mut line = format!("{}: syncing", share.name);
            if let Some(folder) = share.folder.as_ref().filter(|f| f.needed_files > 0) {
                line.push_str(&format!(
                    ", {} in {} file{} still needed",
                    bytes(folder.needed_bytes),
                    folder.needed_files,
                    if folder.needed_files == 1 { "" } else { "s" }
                ));
                let rate = folder.rate_bytes_per_sec;
                if rate >= 1.0 {
                    line.push_str(&format!(", {}/s", bytes(rate as u64)));
                    if folder.needed_bytes > 0 {
                        let left = folder.needed_bytes as f64 / rate;
                        line.push_str(&format!(", ~{} left", duration(left)));
                    }
                }
            }
            line.push_str(&format!(" ({connected} of {known} members connected)"));
            line
        }
        SyncState::Scanning => why("scanning the folder"),
        SyncState::Waiting => why("waiting"),
        SyncState::Paused => why("paused"),
        SyncState::Held => why("held"),
        SyncState::Error => why("error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_like_a_person_writes_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3_650_722_201), "3.4 GiB");
        assert_eq!(bytes(300 * 1024 * 1024), "300 MiB");
        assert_eq!(duration(28.2), "28 s");
        assert_eq!(duration(600.0), "10 min");
        assert_eq!(duration(4.0 * 3600.0), "4 h");
    }
}
