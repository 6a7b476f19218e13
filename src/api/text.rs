//! Status as a person reads it: one line per share that answers "is it synced, and if not,
//! why?", and sizes and rates in human units. The CLI prints these; they are pure functions of
//! the status the API gives, so scripts read `--json` instead.

use std::fmt::Write as _;

use super::Status;
use crate::engine::ShareStatus;
use crate::engine::membership::MemberStatus;
use crate::engine::status::SyncState;
use crate::net::PeerStatus;
use crate::store::{ShareKind, StoreUsage};

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
            "{}: in sync with {connected} of {known} member{}{}",
            share.name,
            if known == 1 { "" } else { "s" },
            behind(share)
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

/// `; laptop at 35 % (1.2 GiB in 3 files to go)` for each connected member that has not got
/// everything we have yet; empty when none lags.
fn behind(share: &ShareStatus) -> String {
    let mut out = String::new();
    for member in share.member_status.iter().filter(|m| m.connected) {
        if let Some(completion) = member.completion.filter(|c| *c < 100.0) {
            let _ = write!(
                out,
                "; {} at {completion:.1} %{}",
                member_name(member),
                to_go(member)
            );
        }
    }
    out
}

/// A member as a person knows it: its device name, or the end of its peer id.
pub fn member_name(member: &MemberStatus) -> String {
    match &member.name {
        Some(name) => name.clone(),
        None => {
            let id = &member.peer_id;
            format!("…{}", &id[id.len().saturating_sub(8)..])
        }
    }
}

/// ` (1.2 GiB in 3 files to go)`, or nothing when that is not known.
pub fn to_go(member: &MemberStatus) -> String {
    match (member.needed_files, member.needed_bytes) {
        (Some(files), Some(bytes)) if files > 0 || bytes > 0 => format!(
            " ({} in {files} file{} to go)",
            self::bytes(bytes),
            if files == 1 { "" } else { "s" }
        ),
        _ => String::new(),
    }
}

/// One line per member of a share: who, whether connected (or since when gone), how far.
fn members(share: &ShareStatus) -> String {
    let mut out = String::new();
    for member in &share.member_status {
        let presence = match &member.last_seen {
            Some(at) if !member.connected => format!("gone since {at}"),
            _ => "connected".to_owned(),
        };
        let completion = member
            .completion
            .map(|c| format!(", {c:.1} %{}", to_go(member)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    member {} ({}): {presence}{completion}",
            member_name(member),
            member.peer_id
        );
    }
    out
}

/// A share kind as the CLI says it.
pub fn kind_name(kind: ShareKind) -> &'static str {
    match kind {
        ShareKind::Records => "records",
        ShareKind::Folder => "folder",
    }
}

/// `meshsync status` as text: the answer first (one line per share), then the details.
pub fn status(status: &Status) -> String {
    let mut out = String::new();
    // The answer first: where each share stands.
    for share in &status.shares {
        let _ = writeln!(out, "{}", headline(share));
    }
    if !status.shares.is_empty() {
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "peer id:  {}", status.peer_id);
    if let Some(name) = &status.name {
        let _ = writeln!(out, "name:     {name}");
    }
    let _ = writeln!(out, "version:  {}", status.version);
    let _ = writeln!(out, "api:      http://{}", status.api);
    let _ = writeln!(out, "mdns:     {}", if status.mdns { "on" } else { "off" });
    let _ = writeln!(out, "listening on:");
    for addr in &status.listen_addrs {
        let _ = writeln!(out, "  {addr}");
    }
    let _ = writeln!(out, "peers ({} connected):", status.peers.len());
    out.push_str(&peers(&status.peers));
    for peer in status.static_peer_status.iter().filter(|p| !p.connected) {
        let next = peer
            .next_dial_in_ms
            .map(|ms| format!(", next try in {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  static peer {} not connected: {} failed dials{}{next}",
            peer.addr,
            peer.failed_dials,
            peer.last_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default(),
        );
    }
    let guards = &status.guards;
    if guards.refused_connections > 0 || guards.inbound_evictions > 0 {
        let _ = writeln!(
            out,
            "  guards: {} connections refused (too many from one address), {} half-received requests dropped for others'",
            guards.refused_connections, guards.inbound_evictions
        );
    }
    let notices = &status.change_notices;
    if notices.merges_waiting > 0 {
        let _ = writeln!(
            out,
            "  store: {} merges of peers' entries wait for the folders to take {} change notices (limit {})",
            notices.merges_waiting, notices.backlog, notices.backlog_limit
        );
    }
    let _ = writeln!(out, "shares ({}):", status.shares.len());
    out.push_str(&shares(&status.shares));
    out
}

/// `meshsync share list` as text, and the shares part of [`status`].
pub fn shares(shares: &[ShareStatus]) -> String {
    let mut out = String::new();
    for share in shares {
        let entries = match (share.files, share.directories, share.deleted) {
            // While files are still to fetch, the entries not written here are not all deletions.
            (Some(files), Some(directories), Some(deleted))
                if share.folder.as_ref().is_some_and(|f| f.needed_files > 0) =>
            {
                format!(
                    "{files} files, {directories} directories, {deleted} deleted or not here yet"
                )
            }
            (Some(files), Some(directories), Some(deleted)) => {
                format!("{files} files, {directories} directories, {deleted} deleted")
            }
            _ => format!("{} entries", share.entries),
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<7} {entries}, {} members, {} sent, {} received  ({})",
            share.name,
            kind_name(share.kind),
            share.members.len(),
            bytes(share.bytes_sent),
            bytes(share.bytes_received),
            share.id
        );
        let connected = share.member_status.iter().filter(|m| m.connected).count();
        let known = share.member_status.len().max(connected);
        let state = serde_json::to_value(share.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let reason = share
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {state}{reason} ({connected} of {known} members connected)"
        );
        out.push_str(&members(share));
        if let Some(error) = &share.last_error {
            let _ = writeln!(out, "    last error at {}: {}", error.at, error.message);
        }
        if share.read_only {
            let _ = writeln!(
                out,
                "    read-only member: {} local edits not shared",
                share.unshared
            );
        }
        if share.refused_entries > 0 {
            let _ = writeln!(
                out,
                "    refused {} entries from members that may not write",
                share.refused_entries
            );
        }
        if !share.trusted_peers.is_empty() {
            let _ = writeln!(out, "    admits only: {}", share.trusted_peers.join(" "));
        }
        if let Some(folder) = &share.folder {
            let state = serde_json::to_value(&folder.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let reason = folder
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {}: {state}{reason}; {} files / {} still needed, {}/s",
                folder.path,
                folder.needed_files,
                bytes(folder.needed_bytes),
                bytes(folder.rate_bytes_per_sec as u64)
            );
            if let Some(problem) = &folder.watch_problem {
                let _ = writeln!(out, "    {problem}");
            }
            if folder.verifying {
                let _ = writeln!(
                    out,
                    "    verifying (what the watcher may have missed): {} paths checked so far",
                    folder.verified_paths
                );
            }
        }
    }
    out
}

/// `meshsync peers` as text, and the peers part of [`status`].
pub fn peers(peers: &[PeerStatus]) -> String {
    let mut out = String::new();
    for peer in peers {
        let rtt = peer
            .rtt_ms
            .map(|ms| format!("{ms:.1} ms"))
            .unwrap_or_else(|| "-".into());
        let found = serde_json::to_value(peer.found_by)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let name = peer
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}{name}  {:<9} rtt {:<9} {}",
            peer.peer_id,
            found,
            rtt,
            peer.addrs.join(", ")
        );
    }
    out
}

/// `meshsync store`: the file, then a row per table with its rows and bytes, and a line for
/// what the tables do not use (redb's metadata and free pages kept for reuse).
pub fn store_usage(usage: &StoreUsage) -> String {
    let mut out = format!("{}: {}\n", usage.path, bytes(usage.file_bytes));
    let _ = writeln!(
        out,
        "  {:<12} {:>12} {:>11} {:>11} {:>11} {:>11}",
        "table", "rows", "in pages", "data", "structure", "unused"
    );
    for table in &usage.tables {
        let _ = writeln!(
            out,
            "  {:<12} {:>12} {:>11} {:>11} {:>11} {:>11}",
            table.name,
            table.entries,
            bytes(table.bytes()),
            bytes(table.stored_bytes),
            bytes(table.overhead_bytes),
            bytes(table.fragmented_bytes)
        );
    }
    let _ = writeln!(
        out,
        "  not in tables (metadata, free pages): {}",
        bytes(usage.file_bytes.saturating_sub(usage.tables_bytes))
    );
    out
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
