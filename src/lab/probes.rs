//! Edit-beats-delete probes: during every fault that keeps peers apart (a partition, a peer
//! killed or paused), the lab edits a file on one side and deletes the same file on the other,
//! so the two changes are certainly concurrent (neither side can have seen the other's). Once
//! the mesh has converged, the edit must have survived on every member: at its path, or as a
//! conflict copy. A deletion removes only what the deleter had seen; a daemon that lets it win
//! loses the edit for good.
//!
//! The probe files live in their own directory ([`PROBE_DIR`]), which the random workload
//! never touches, and are written with the share's marker so the other invariants (torn files,
//! leaks) cover them too.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand_pcg::Pcg64;

use super::check::{Violation, tree};
use super::peers::{LabPeer, folder_of};
use super::scenario::{Fault, FaultKind, Scenario, ShareKindSpec, ShareSpec};
use super::workload::{Ledger, content};
use super::{LabError, MEMBERS_TIMEOUT, peer};

/// Where in each folder share the probe files are.
pub const PROBE_DIR: &str = "lab-probes";

/// Size of a probe file's contents.
const PROBE_SIZE: u64 = 2048;

/// One edit against one delete.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The fault it runs in (index into the scenario's faults).
    pub fault: usize,
    /// The folder share.
    pub share: String,
    /// The file, relative to the share's root.
    pub path: String,
    /// Once carried out: who edited, who deleted, and the edit's BLAKE3 (hex).
    pub done: Option<Done>,
}

/// A probe carried out.
#[derive(Debug, Clone)]
pub struct Done {
    /// The peer whose copy was edited.
    pub editor: String,
    /// The peer whose copy was deleted.
    pub deleter: String,
    /// The edited content's hash.
    pub edit: String,
    /// Seconds from the start of the workload.
    pub at_s: f64,
}

/// The faults that keep peers apart, and the time (seconds from the start) their probes run:
/// halfway through.
pub fn probe_time(fault: &Fault) -> Option<f64> {
    matches!(
        fault.kind,
        FaultKind::Partition | FaultKind::Kill | FaultKind::Pause
    )
    .then(|| (fault.at + fault.lasts / 2).as_secs_f64())
}

/// One probe per separating fault and folder share.
pub fn plan(scenario: &Scenario) -> Vec<Probe> {
    let mut probes = Vec::new();
    for (i, fault) in scenario.faults.iter().enumerate() {
        if probe_time(fault).is_none() {
            continue;
        }
        for share in scenario
            .shares
            .iter()
            .filter(|s| s.kind == ShareKindSpec::Folder)
        {
            if sides(share, fault).is_some() {
                probes.push(Probe {
                    fault: i,
                    share: share.name.clone(),
                    path: format!("{PROBE_DIR}/fault-{i}.bin"),
                    done: None,
                });
            }
        }
    }
    probes
}

/// The read-write members of `share` that may edit (the side kept apart) and delete (the
/// others), each in order of preference; `None` if either side has none.
fn sides(share: &ShareSpec, fault: &Fault) -> Option<(Vec<String>, Vec<String>)> {
    let writers: Vec<&String> = share
        .members
        .iter()
        .filter(|m| !share.read_only.contains(m))
        .collect();
    let (edit, delete): (Vec<String>, Vec<String>) = match fault.kind {
        FaultKind::Partition => {
            let first = fault.groups.first()?;
            writers
                .iter()
                .map(|m| (*m).clone())
                .partition(|m| first.contains(m))
        }
        _ => writers
            .iter()
            .map(|m| (*m).clone())
            .partition(|m| *m == fault.peer),
    };
    // In a partition of three or more groups, only the second group deletes.
    let delete = match fault.kind {
        FaultKind::Partition => delete
            .into_iter()
            .filter(|m| fault.groups.get(1).is_some_and(|g| g.contains(m)))
            .collect(),
        _ => delete,
    };
    (!edit.is_empty() && !delete.is_empty()).then_some((edit, delete))
}

/// Writes every probe file on its share's creator and waits until every member holds it.
pub fn create(
    probes: &[Probe],
    scenario: &Scenario,
    peers: &[LabPeer],
    seed: u64,
    rng: &mut Pcg64,
    ledger: &mut Ledger,
    stop: &AtomicBool,
) -> Result<(), LabError> {
    let mut waiting = Vec::new();
    for probe in probes {
        let share = share_of(scenario, &probe.share);
        let creator = peer(peers, &share.members[0]);
        let bytes = content(seed, &share.name, PROBE_SIZE, rng);
        let hash = blake3::hash(&bytes);
        ledger.contents.insert(*hash.as_bytes());
        write(&folder_of(creator, &share.name), &probe.path, &bytes)?;
        waiting.push((probe, hash.to_hex().to_string()));
    }
    let started = Instant::now();
    for (probe, hash) in waiting {
        for name in &share_of(scenario, &probe.share).members {
            let root = folder_of(peer(peers, name), &probe.share);
            while tree(&root.join(PROBE_DIR))
                .get(probe.path.trim_start_matches(&format!("{PROBE_DIR}/")))
                != Some(&hash)
            {
                if started.elapsed() > MEMBERS_TIMEOUT {
                    return Err(LabError::Setup(format!(
                        "share {}: probe file {} did not reach {name} within {MEMBERS_TIMEOUT:?}",
                        probe.share, probe.path
                    )));
                }
                if stop.load(Ordering::Relaxed) {
                    return Err(LabError::Interrupted);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// Carries out the probes of fault `fault`: on each share, an edit on the side kept apart and
/// a delete on the other, by the first member of each side that can (it holds the file and has
/// not left the share; a killed or paused peer's folder is edited on disk all the same).
#[allow(clippy::too_many_arguments)]
pub fn carry_out(
    probes: &mut [Probe],
    fault: usize,
    scenario: &Scenario,
    peers: &[LabPeer],
    seed: u64,
    rng: &mut Pcg64,
    ledger: &mut Ledger,
    at_s: f64,
) {
    for probe in probes.iter_mut().filter(|p| p.fault == fault) {
        let share = share_of(scenario, &probe.share);
        let Some((editors, deleters)) = sides(share, &scenario.faults[fault]) else {
            continue;
        };
        let holder = |name: &String| {
            let p = peer(peers, name);
            (!p.left.contains(&share.name) && folder_of(p, &share.name).join(&probe.path).is_file())
                .then_some(p)
        };
        let (Some(editor), Some(deleter)) = (
            editors.iter().find_map(holder),
            deleters.iter().find_map(holder),
        ) else {
            continue;
        };
        let bytes = content(seed, &share.name, PROBE_SIZE, rng);
        let hash = blake3::hash(&bytes);
        ledger.contents.insert(*hash.as_bytes());
        if write(&folder_of(editor, &share.name), &probe.path, &bytes).is_err() {
            continue;
        }
        if std::fs::remove_file(folder_of(deleter, &share.name).join(&probe.path)).is_err() {
            continue;
        }
        probe.done = Some(Done {
            editor: editor.name.clone(),
            deleter: deleter.name.clone(),
            edit: hash.to_hex().to_string(),
            at_s,
        });
    }
}

/// After convergence: every member still in the share holds each probe's edit, at its path or
/// as a conflict copy beside it.
pub fn check(
    probes: &[Probe],
    scenario: &Scenario,
    peers: &[LabPeer],
    at_s: f64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for probe in probes {
        let Some(done) = &probe.done else {
            continue;
        };
        let share = share_of(scenario, &probe.share);
        for name in &share.members {
            let p = peer(peers, name);
            if p.left.contains(&share.name) {
                continue;
            }
            let held = tree(&folder_of(p, &share.name).join(PROBE_DIR))
                .values()
                .any(|hash| *hash == done.edit);
            if !held {
                out.push(Violation {
                    invariant: "edit_beats_delete",
                    peer: name.clone(),
                    share: share.name.clone(),
                    item: Some(probe.path.clone()),
                    detail: format!(
                        "the edit made on {} at {:.1} s, concurrent with the delete on {}, is gone",
                        done.editor, done.at_s, done.deleter
                    ),
                    at_s,
                });
            }
        }
    }
    out
}

fn write(root: &Path, path: &str, bytes: &[u8]) -> Result<(), LabError> {
    let at = root.join(path);
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent).map_err(LabError::io("create a probe directory"))?;
    }
    std::fs::write(at, bytes).map_err(LabError::io("write a probe file"))
}

fn share_of<'a>(scenario: &'a Scenario, name: &str) -> &'a ShareSpec {
    scenario
        .shares
        .iter()
        .find(|s| s.name == name)
        .expect("probes are planned from the scenario's shares")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = r#"
        name = "probes"
        [topology]
        kind = "lan"
        peers = ["a", "b", "c", "d"]
        [[share]]
        name = "docs"
        kind = "folder"
        members = ["a", "b", "c"]
        read_only = ["c"]
        [[share]]
        name = "notes"
        kind = "records"
        members = ["a", "b"]
        [[fault]]
        at = "2s"
        kind = "partition"
        groups = [["c", "d"], ["a", "b"]]
        for = "10s"
        [[fault]]
        at = "3s"
        kind = "kill"
        peer = "b"
        for = "4s"
        [[fault]]
        at = "4s"
        kind = "loss"
        peer = "a"
        percent = 10
        for = "4s"
        [[fault]]
        at = "5s"
        kind = "pause"
        peer = "d"
        for = "4s"
    "#;

    #[test]
    fn a_probe_per_separating_fault_with_a_writer_on_each_side() {
        let scenario = Scenario::parse(SCENARIO).unwrap();
        let planned: Vec<(usize, String)> = plan(&scenario)
            .into_iter()
            .map(|p| (p.fault, p.share))
            .collect();
        // The partition puts only the read-only c (and the outsider d) on the first side: no
        // writer edits there; loss separates no one; d is no member of docs.
        assert_eq!(planned, [(1, "docs".to_owned())]);
        let (edit, delete) = sides(&scenario.shares[0], &scenario.faults[1]).unwrap();
        assert_eq!((edit, delete), (vec!["b".to_owned()], vec!["a".to_owned()]));
        assert_eq!(probe_time(&scenario.faults[1]), Some(5.0));
        assert_eq!(probe_time(&scenario.faults[2]), None);
    }

    #[test]
    fn a_partition_edits_on_its_first_group_and_deletes_on_its_second() {
        let scenario = Scenario::parse(
            &SCENARIO.replace(r#"[["c", "d"], ["a", "b"]]"#, r#"[["b", "d"], ["a", "c"]]"#),
        )
        .unwrap();
        let (edit, delete) = sides(&scenario.shares[0], &scenario.faults[0]).unwrap();
        assert_eq!((edit, delete), (vec!["b".to_owned()], vec!["a".to_owned()]));
    }
}
