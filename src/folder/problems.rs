//! Local paths that cannot be synced (a name other systems cannot hold, a FIFO, no permission to
//! read…): kept per folder with the reason for `status`, and each said once in the log, not at
//! every scan.
//!
//! Methods of the folder actor, kept apart from its loop.

use std::collections::HashSet;

use tracing::warn;

use super::actor::{FolderActor, ScanResult};

/// The most unsyncable paths remembered per folder (all scans together).
pub const MAX_UNSYNCABLE: usize = 10_000;
/// The most other scan warnings remembered as said.
pub const MAX_WARNED: usize = 1_000;

impl FolderActor {
    /// Takes in a scan's problems: a full scan replaces what was known, a verification slice
    /// what was known in its range, a partial one updates the paths it looked at. New ones are logged.
    pub(super) fn note_problems(&mut self, result: &ScanResult) {
        if result.full {
            let found: HashSet<&str> = result.problems.iter().map(|(p, _)| p.as_str()).collect();
            self.unsyncable
                .retain(|path, _| found.contains(path.as_str()));
            self.warned.retain(|w| result.warnings.contains(w));
        } else if let Some(range) = &result.slice {
            let found: HashSet<&str> = result.problems.iter().map(|(p, _)| p.as_str()).collect();
            self.unsyncable
                .retain(|path, _| !range.contains(path) || found.contains(path.as_str()));
        } else {
            for path in result.updated.keys().chain(&result.gone) {
                self.unsyncable.remove(path);
            }
            if let Some(spilled) = &result.spilled {
                self.unsyncable.retain(|path, _| !spilled.contains(path));
            }
        }
        for (path, reason) in &result.problems {
            if self.unsyncable.get(path) == Some(reason) {
                continue;
            }
            if self.unsyncable.len() >= MAX_UNSYNCABLE && !self.unsyncable.contains_key(path) {
                continue;
            }
            warn!(folder = %self.name, "{path}: {reason}");
            self.unsyncable.insert(path.clone(), reason.clone());
        }
        for warning in &result.warnings {
            if self.warned.len() < MAX_WARNED && self.warned.insert(warning.clone()) {
                warn!(folder = %self.name, "{warning}");
            }
        }
    }
}
