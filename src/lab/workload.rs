//! The lab's operations: seeded random file and record changes on chosen peers, at a rate.
//! Everything the lab writes is remembered — every file content's hash, and per record key the
//! last write a daemon acknowledged — so the invariants can tell a torn file or a lost write
//! from a legitimate one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use rand::RngExt;
use rand_pcg::Pcg64;

use super::peers::{CallError, LabPeer, folder_of};
use super::scenario::{Mix, ShareKindSpec, Workload};
use crate::api::records::RecordInput;
use crate::client::ClientError;

/// A record key's fate as far as the daemons acknowledged it.
#[derive(Debug, Clone, Default)]
pub struct KeyHistory {
    /// The value of the last acknowledged write (`None`: deleted); unset before the first.
    pub acked: Option<Option<String>>,
    /// Values of writes after it that got no acknowledgement (they may or may not have landed).
    pub unacked: Vec<Option<String>>,
    /// Every value written to the key, acknowledged or not (`None`: a delete).
    pub written: Vec<Option<String>>,
}

/// What the operations did, for the invariants and the report.
#[derive(Debug, Default)]
pub struct Ledger {
    /// BLAKE3 of every file content the lab wrote.
    pub contents: HashSet<[u8; 32]>,
    /// Per records share, per key.
    pub keys: HashMap<String, BTreeMap<String, KeyHistory>>,
    /// Operations carried out.
    pub done: u64,
    /// Operations skipped (no peer of the workload up, or nothing to edit).
    pub skipped: u64,
    /// Operations that failed (the daemon refused or was unreachable).
    pub failed: u64,
}

/// The text every file and record of `share` starts with; found in a non-member's home, it
/// proves data of the share reached it.
pub fn marker(seed: u64, share: &str) -> String {
    format!("meshsync-lab-{seed}-{share}:")
}

/// One operation to run.
pub struct Op<'a> {
    /// The workload it belongs to.
    pub workload: &'a Workload,
    /// The share's kind.
    pub kind: ShareKindSpec,
    /// Its number within the workload.
    pub index: u32,
}

/// The operations of every workload, in the order of their times (seconds from the start).
pub fn timeline<'a>(
    workloads: &'a [Workload],
    kind_of: impl Fn(&str) -> ShareKindSpec,
) -> Vec<(f64, Op<'a>)> {
    let mut ops: Vec<(f64, Op)> = workloads
        .iter()
        .flat_map(|w| {
            let kind = kind_of(&w.share);
            (0..w.ops).map(move |index| {
                let at = f64::from(index) / w.rate;
                (
                    at,
                    Op {
                        workload: w,
                        kind,
                        index,
                    },
                )
            })
        })
        .collect();
    ops.sort_by(|a, b| a.0.total_cmp(&b.0));
    ops
}

/// What a folder operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileOp {
    Create,
    Edit,
    Delete,
    Rename,
    Big,
}

fn pick_file_op(rng: &mut Pcg64, mix: &Mix) -> FileOp {
    let weights = [
        (FileOp::Create, mix.create),
        (FileOp::Edit, mix.edit),
        (FileOp::Delete, mix.delete),
        (FileOp::Rename, mix.rename),
        (FileOp::Big, mix.big),
    ];
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total.max(1));
    for (op, weight) in weights {
        if roll < weight {
            return op;
        }
        roll -= weight;
    }
    FileOp::Create
}

/// Runs one operation on one of its workload's peers that is up.
pub fn run(op: &Op, peers: &[LabPeer], seed: u64, rng: &mut Pcg64, ledger: &mut Ledger) {
    let up: Vec<&LabPeer> = op
        .workload
        .peers
        .iter()
        .filter_map(|name| peers.iter().find(|p| &p.name == name))
        .filter(|p| p.is_up() && !p.left.contains(&op.workload.share))
        .collect();
    if up.is_empty() {
        ledger.skipped += 1;
        return;
    }
    let peer = up[rng.random_range(0..up.len())];
    let share = &op.workload.share;
    let ok = match op.kind {
        ShareKindSpec::Folder => file_op(op, &folder_of(peer, share), seed, rng, ledger),
        ShareKindSpec::Records => record_op(op, peer, seed, rng, ledger),
    };
    match ok {
        Some(true) => ledger.done += 1,
        Some(false) => ledger.failed += 1,
        None => ledger.skipped += 1,
    }
}

/// The files (not directories) under `dir` that the lab could have made, by relative path.
fn lab_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for sub in ["", "d0", "d1", "d2", "d3"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            files.push(if sub.is_empty() {
                name
            } else {
                format!("{sub}/{name}")
            });
        }
    }
    files.sort();
    files
}

/// Random content for a file, starting with the share's marker.
pub(super) fn content(seed: u64, share: &str, size: u64, rng: &mut Pcg64) -> Vec<u8> {
    let mut bytes = marker(seed, share).into_bytes();
    let size = (size as usize).max(bytes.len());
    let start = bytes.len();
    bytes.resize(size, 0);
    rng.fill(&mut bytes[start..]);
    bytes
}

fn file_op(op: &Op, dir: &Path, seed: u64, rng: &mut Pcg64, ledger: &mut Ledger) -> Option<bool> {
    let w = op.workload;
    let existing = lab_files(dir);
    let mut kind = pick_file_op(rng, &w.mix);
    if existing.is_empty() && matches!(kind, FileOp::Edit | FileOp::Delete | FileOp::Rename) {
        kind = FileOp::Create;
    }
    let new_path = |rng: &mut Pcg64| {
        let sub = rng.random_range(0..5u32);
        let name = format!("f{}-{}.bin", op.index, rng.random_range(0..1_000_000u32));
        if sub == 0 {
            name
        } else {
            format!("d{}/{name}", sub - 1)
        }
    };
    let write = |path: &str, size: u64, rng: &mut Pcg64, ledger: &mut Ledger| {
        let bytes = content(seed, &w.share, size, rng);
        ledger.contents.insert(*blake3::hash(&bytes).as_bytes());
        let at = dir.join(path);
        if let Some(parent) = at.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(at, bytes).is_ok()
    };
    let ok = match kind {
        FileOp::Create => {
            let size = rng.random_range(0..=w.max_file_size);
            write(&new_path(rng), size, rng, ledger)
        }
        FileOp::Big => write(&new_path(rng), w.big_size, rng, ledger),
        FileOp::Edit => {
            let path = &existing[rng.random_range(0..existing.len())];
            let size = rng.random_range(0..=w.max_file_size);
            write(path, size, rng, ledger)
        }
        FileOp::Delete => {
            let path = &existing[rng.random_range(0..existing.len())];
            std::fs::remove_file(dir.join(path)).is_ok()
        }
        FileOp::Rename => {
            let from = &existing[rng.random_range(0..existing.len())];
            let to = new_path(rng);
            let at = dir.join(&to);
            if let Some(parent) = at.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            std::fs::rename(dir.join(from), at).is_ok()
        }
    };
    Some(ok)
}

fn record_op(
    op: &Op,
    peer: &LabPeer,
    seed: u64,
    rng: &mut Pcg64,
    ledger: &mut Ledger,
) -> Option<bool> {
    let w = op.workload;
    // Few enough keys that they are written again and deleted.
    let key_space = (w.ops / 4).max(1);
    let key = format!("k{:05}", rng.random_range(0..key_space));
    let total = w.mix.put + w.mix.del;
    let delete = rng.random_range(0..total.max(1)) >= w.mix.put;
    let value = (!delete).then(|| format!("{}{}:{}", marker(seed, &w.share), op.index, peer.name));
    let answer: Result<serde_json::Value, _> = match &value {
        Some(v) => peer.post(
            &format!("/v1/kv/{}/put", w.share),
            &RecordInput {
                key: key.clone(),
                value: crate::api::records::JsonValue::of(v.as_bytes()),
            },
        ),
        None => peer.post(
            &format!("/v1/kv/{}/del", w.share),
            &crate::api::records::KeyOnly { key: key.clone() },
        ),
    };
    if let Err(CallError::Client(ClientError::Api { status: 404, .. })) = &answer {
        // A delete of a key this peer does not hold (yet): nothing was written.
        return None;
    }
    let history = ledger
        .keys
        .entry(w.share.clone())
        .or_default()
        .entry(key)
        .or_default();
    history.written.push(value.clone());
    match answer {
        Ok(_) => {
            history.acked = Some(value);
            history.unacked.clear();
            Some(true)
        }
        Err(_) => {
            history.unacked.push(value);
            Some(false)
        }
    }
}
