//! What a lab run found, for a person (text) and for scripts (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::check::Violation;

/// One peer's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// Its name in the scenario.
    pub name: String,
    /// Its peer id.
    pub peer_id: String,
    /// Bytes it sent for its shares (all its daemons together).
    pub bytes_sent: u64,
    /// Bytes it received for its shares.
    pub bytes_received: u64,
    /// Reconciliation sessions its last daemon ran.
    pub sessions: u64,
    /// Reconciliation rounds those sessions took.
    pub rounds: u64,
    /// The lab peers its last daemon was connected to at the end, with how it found each
    /// (`mdns`, `kad`, `static`, `bootstrap`, `inbound`).
    pub connected: BTreeMap<String, String>,
}

/// A fault as it was carried out.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// Seconds from the start of the workload.
    pub at_s: f64,
    /// `kill` or `pause`.
    pub kind: String,
    /// The peer.
    pub peer: String,
    /// How long it lasted.
    pub for_s: f64,
}

/// What a run found; `--json` writes it as it is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The workload's seed.
    pub seed: u64,
    /// Whether every invariant held.
    pub passed: bool,
    /// Seconds from the end of the last operation and fault until every member of every share
    /// held the same; null if they never did within the scenario's `converge_timeout`.
    pub converged_after_s: Option<f64>,
    /// Broken invariants, with evidence: each (invariant, peer, share, item) once, as first
    /// seen, at most [`MAX_LISTED_VIOLATIONS`] per invariant.
    pub violations: Vec<Violation>,
    /// How many distinct violations there were in all.
    pub violations_total: usize,
    /// Per peer.
    pub peers: Vec<PeerReport>,
    /// The faults carried out.
    pub faults: Vec<FaultReport>,
    /// Operations done, skipped (no peer up, nothing to edit) and refused.
    pub ops_done: u64,
    /// See `ops_done`.
    pub ops_skipped: u64,
    /// See `ops_done`.
    pub ops_failed: u64,
    /// Torn-file samples taken during the run (folders read).
    pub samples: u64,
    /// Conflict copies in the converged folders.
    pub conflicts: u64,
    /// Edit-beats-delete probes carried out (an edit and a concurrent delete of one file).
    pub probes: u64,
    /// Seconds the whole run took.
    pub duration_s: f64,
    /// Where the peers' homes are, when they were kept (a violation was found).
    pub kept_dir: Option<String>,
    /// What the scenario asked for that this machine could not do, and was left out (no root
    /// for namespaces or small disks, no libfaketime): empty when everything ran.
    pub skipped: Vec<String>,
}

impl Report {
    /// The report for a person.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "lab {} (seed {}): {verdict}", self.scenario, self.seed);
        match self.converged_after_s {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "  converged {s:.2} s after the last operation and fault"
                );
            }
            None => {
                let _ = writeln!(out, "  did NOT converge");
            }
        }
        let _ = writeln!(
            out,
            "  {} operations done, {} skipped, {} refused; {} faults; {} edit-vs-delete probes; {} torn-file samples; {} conflict copies; {:.1} s in all",
            self.ops_done,
            self.ops_skipped,
            self.ops_failed,
            self.faults.len(),
            self.probes,
            self.samples,
            self.conflicts,
            self.duration_s
        );
        for peer in &self.peers {
            let connected: Vec<String> = peer
                .connected
                .iter()
                .map(|(name, how)| format!("{name} ({how})"))
                .collect();
            let _ = writeln!(
                out,
                "  {:<10} sent {:>10}  received {:>10}  sessions {:<5} rounds {:<5} connected to {}",
                peer.name,
                crate::api::text::bytes(peer.bytes_sent),
                crate::api::text::bytes(peer.bytes_received),
                peer.sessions,
                peer.rounds,
                if connected.is_empty() {
                    "none".to_owned()
                } else {
                    connected.join(", ")
                }
            );
        }
        for v in &self.violations {
            let _ = writeln!(
                out,
                "  VIOLATION {} at {:.1} s on {} [{}] {}: {}",
                v.invariant,
                v.at_s,
                v.peer,
                v.share,
                v.item.as_deref().unwrap_or("-"),
                v.detail
            );
        }
        if self.violations_total > self.violations.len() {
            let _ = writeln!(
                out,
                "  … {} violations in all ({} listed)",
                self.violations_total,
                self.violations.len()
            );
        }
        for line in &self.skipped {
            let _ = writeln!(out, "  SKIPPED {line}");
        }
        if let Some(dir) = &self.kept_dir {
            let _ = writeln!(out, "  homes and daemon logs kept in {dir}");
        }
        out
    }
}
