//! Scenario files for `meshsync lab run`: what to start, what to run on it, and what to break
//! when. TOML, read strictly: an unknown key, a bad duration or size, a peer or share that is
//! not declared is an error that names it, before anything is started. Pure code.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name, for the report.
    pub name: String,
    /// Seed of the random workload (`--seed` overrides it).
    #[serde(default)]
    pub seed: u64,
    /// Longest wait for convergence after the last operation and fault.
    #[serde(default = "default_converge_timeout", with = "duration")]
    pub converge_timeout: Duration,
    /// The peers and how they reach each other.
    pub topology: Topology,
    /// The shares and their members.
    #[serde(default, rename = "share")]
    pub shares: Vec<ShareSpec>,
    /// Operations to run.
    #[serde(default, rename = "workload")]
    pub workloads: Vec<Workload>,
    /// Faults, each at a time from the start of the workload.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
}

fn default_converge_timeout() -> Duration {
    Duration::from_secs(120)
}

/// The peers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// How they are connected.
    pub kind: TopologyKind,
    /// Their names, used everywhere else in the file.
    pub peers: Vec<String>,
    /// Peers whose clock is off, by how many seconds (ahead; negative: behind), for the whole
    /// run: their daemons run under libfaketime (Debian's `faketime`), nothing else is touched.
    #[serde(default)]
    pub clock_offsets: std::collections::BTreeMap<String, i64>,
    /// Peers whose shared folders live on a small disk of their own (a tmpfs of this size the
    /// lab mounts at `<home>/folders`; needs root), for `disk-full` faults.
    #[serde(default)]
    pub small_disks: std::collections::BTreeMap<String, Size>,
    /// For kind `lans`: the peers of each LAN (every peer on exactly one).
    #[serde(default)]
    pub lans: Vec<Vec<String>>,
    /// For kind `lans`: the peers every other peer has as its Kademlia bootstrap peers (by
    /// default the first peer of the first LAN).
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

impl Topology {
    /// Whether the peers run in network namespaces (network faults need it).
    pub fn namespaced(&self) -> bool {
        matches!(self.kind, TopologyKind::Lan | TopologyKind::Lans)
    }

    /// The peers in the order of their hosts: LAN by LAN for `lans`, else as listed.
    pub fn host_order(&self) -> Vec<&str> {
        match self.kind {
            TopologyKind::Lans => self.lans.iter().flatten().map(String::as_str).collect(),
            _ => self.peers.iter().map(String::as_str).collect(),
        }
    }

    /// The Kademlia bootstrap peers of a `lans` topology (none for the others).
    pub fn bootstrap_peers(&self) -> Vec<&str> {
        match self.kind {
            TopologyKind::Lans if self.bootstrap.is_empty() => self
                .lans
                .first()
                .and_then(|lan| lan.first())
                .map(String::as_str)
                .into_iter()
                .collect(),
            TopologyKind::Lans => self.bootstrap.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// A size in bytes, written as `512`, `64KiB`, `8MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Size(#[serde(with = "size")] pub u64);

/// How the peers are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyKind {
    /// Every peer on 127.0.0.1, each a static peer of the others; no mDNS.
    Loopback,
    /// A LAN of network namespaces (needs root): one bridge, one namespace per peer, mDNS on,
    /// no static peers. Network faults (loss, rate, partition) need it.
    Lan,
    /// Several such LANs (`topology.lans`) joined by a router namespace: mDNS finds the peers
    /// of one LAN, and the peers of the others only through the Kademlia DHT, bootstrapped
    /// from `topology.bootstrap`. Share tokens carry no addresses here.
    Lans,
}

/// A share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareSpec {
    /// Its local name on every member.
    pub name: String,
    /// `folder` or `records`.
    pub kind: ShareKindSpec,
    /// Members; the first creates it.
    pub members: Vec<String>,
    /// Members that join with a read-only token.
    #[serde(default)]
    pub read_only: Vec<String>,
}

/// What a share holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareKindSpec {
    /// A directory.
    Folder,
    /// Key/value records.
    Records,
}

/// Random operations on one share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The share.
    pub share: String,
    /// The peers the operations run on (each operation picks one).
    pub peers: Vec<String>,
    /// How many operations.
    pub ops: u32,
    /// Operations per second.
    pub rate: f64,
    /// Relative weights of the operations: for folders `create`, `edit`, `delete`, `rename`,
    /// `big`; for records `put`, `del`.
    #[serde(default)]
    pub mix: Mix,
    /// Size of a `big` file.
    #[serde(default = "default_big_size", with = "size")]
    pub big_size: u64,
    /// Largest ordinary file.
    #[serde(default = "default_file_size", with = "size")]
    pub max_file_size: u64,
}

fn default_big_size() -> u64 {
    8 << 20
}

fn default_file_size() -> u64 {
    64 << 10
}

/// Relative weights of operations.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Create a new file.
    #[serde(default)]
    pub create: u32,
    /// Rewrite an existing file.
    #[serde(default)]
    pub edit: u32,
    /// Delete a file.
    #[serde(default)]
    pub delete: u32,
    /// Rename a file.
    #[serde(default)]
    pub rename: u32,
    /// Create a big file.
    #[serde(default)]
    pub big: u32,
    /// Write a record.
    #[serde(default)]
    pub put: u32,
    /// Delete a record.
    #[serde(default)]
    pub del: u32,
}

/// A fault on the timeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When, from the start of the workload.
    #[serde(with = "duration")]
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
    /// The peer it hits (all kinds but `partition`).
    #[serde(default)]
    pub peer: String,
    /// How long it lasts (then the peer restarts or resumes, the loss or limit is lifted, the
    /// partition heals).
    #[serde(rename = "for", with = "duration")]
    pub lasts: Duration,
    /// For `loss`: percent of packets dropped each way.
    #[serde(default)]
    pub percent: u32,
    /// For `rate`: the link's rate each way, in kbit/s.
    #[serde(default)]
    pub kbit: u32,
    /// For `partition`: groups of peers that hear only each other.
    #[serde(default)]
    pub groups: Vec<Vec<String>>,
    /// For `leave`: the share the peer leaves (and joins again after `for`).
    #[serde(default)]
    pub share: String,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9`, then a restart after `for`.
    Kill,
    /// SIGSTOP, then SIGCONT after `for`.
    Pause,
    /// Random packet loss on the peer's link (`lan` only).
    Loss,
    /// A rate limit on the peer's link (`lan` only).
    Rate,
    /// The LAN cut into groups (`lan` only).
    Partition,
    /// The peer leaves a share (`meshsync share leave`) and joins it again after `for`, into
    /// the same folder, with a token from another member.
    Leave,
    /// The peer's small disk (`topology.small_disks`) is filled up, and freed after `for`.
    DiskFull,
}

impl FaultKind {
    /// The kind as scenario files and reports write it.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Loss => "loss",
            FaultKind::Rate => "rate",
            FaultKind::Partition => "partition",
            FaultKind::Leave => "leave",
            FaultKind::DiskFull => "disk-full",
        }
    }
}

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not TOML, or not the shape above (unknown key, bad duration, …).
    #[error("{0}")]
    Syntax(String),
    /// Valid TOML, but not a scenario that can run.
    #[error("{0}")]
    Invalid(String),
}

impl Scenario {
    /// Reads and checks a scenario.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError::Syntax(e.to_string()))?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        let peers: HashSet<&str> = self.topology.peers.iter().map(String::as_str).collect();
        if self.topology.peers.len() < 2 {
            return invalid("topology.peers: at least 2 peers are needed".into());
        }
        if peers.len() != self.topology.peers.len() {
            return invalid("topology.peers: a peer name is listed twice".into());
        }
        for name in &self.topology.peers {
            if !simple_name(name) {
                return invalid(format!(
                    "topology.peers: `{name}` is not a valid peer name (letters, digits, - and _)"
                ));
            }
        }
        for (name, offset) in &self.topology.clock_offsets {
            if !peers.contains(name.as_str()) {
                return invalid(format!("topology.clock_offsets: unknown peer `{name}`"));
            }
            if offset.abs() > 86_400 {
                return invalid(format!(
                    "topology.clock_offsets: {name}'s offset {offset} s is beyond a day"
                ));
            }
        }
        for (name, size) in &self.topology.small_disks {
            if !peers.contains(name.as_str()) {
                return invalid(format!("topology.small_disks: unknown peer `{name}`"));
            }
            if size.0 < 1 << 20 {
                return invalid(format!(
                    "topology.small_disks: {name}'s disk must be at least 1MiB"
                ));
            }
        }
        let known = |what: &str, name: &str| -> Result<(), ScenarioError> {
            if peers.contains(name) {
                Ok(())
            } else {
                Err(ScenarioError::Invalid(format!(
                    "{what}: unknown peer `{name}` (topology.peers has {})",
                    self.topology.peers.join(", ")
                )))
            }
        };
        self.check_lans(&known)?;
        let mut shares = HashSet::new();
        for share in &self.shares {
            if !simple_name(&share.name) || !shares.insert(share.name.as_str()) {
                return invalid(format!(
                    "share `{}`: names must be unique (letters, digits, - and _)",
                    share.name
                ));
            }
            if share.members.len() < 2 {
                return invalid(format!("share `{}`: needs at least 2 members", share.name));
            }
            for member in share.members.iter().chain(&share.read_only) {
                known(&format!("share `{}`", share.name), member)?;
            }
            if let Some(outsider) = share.read_only.iter().find(|p| !share.members.contains(p)) {
                return invalid(format!(
                    "share `{}`: read-only peer `{outsider}` is not among its members",
                    share.name
                ));
            }
            if share.read_only.contains(&share.members[0]) {
                return invalid(format!(
                    "share `{}`: its first member creates it and cannot be read-only",
                    share.name
                ));
            }
        }
        for workload in &self.workloads {
            let Some(share) = self.shares.iter().find(|s| s.name == workload.share) else {
                return invalid(format!("workload: unknown share `{}`", workload.share));
            };
            for peer in &workload.peers {
                known("workload", peer)?;
                if !share.members.contains(peer) || share.read_only.contains(peer) {
                    return invalid(format!(
                        "workload on `{}`: `{peer}` is not a read-write member of it",
                        share.name
                    ));
                }
            }
            if workload.peers.is_empty() {
                return invalid(format!("workload on `{}`: no peers", share.name));
            }
            if !(workload.rate > 0.0 && workload.rate <= 10_000.0) {
                return invalid(format!(
                    "workload on `{}`: rate must be between 0 and 10000 operations a second",
                    share.name
                ));
            }
            let m = &workload.mix;
            let (folder_ops, record_ops) = (
                m.create + m.edit + m.delete + m.rename + m.big,
                m.put + m.del,
            );
            match share.kind {
                ShareKindSpec::Folder if record_ops > 0 || folder_ops == 0 => {
                    return invalid(format!(
                        "workload on folder share `{}`: mix takes create, edit, delete, rename and big",
                        share.name
                    ));
                }
                ShareKindSpec::Records if folder_ops > 0 || record_ops == 0 => {
                    return invalid(format!(
                        "workload on records share `{}`: mix takes put and del",
                        share.name
                    ));
                }
                _ => {}
            }
        }
        for fault in &self.faults {
            let what = format!("fault {} at {:?}", fault.kind.name(), fault.at);
            let network = matches!(
                fault.kind,
                FaultKind::Loss | FaultKind::Rate | FaultKind::Partition
            );
            if network && !self.topology.namespaced() {
                return invalid(format!(
                    "{what}: network faults need topology kind \"lan\" or \"lans\" (network namespaces)"
                ));
            }
            match fault.kind {
                FaultKind::Partition => {
                    if fault.groups.len() < 2 {
                        return invalid(format!("{what}: groups needs at least 2 groups"));
                    }
                    let mut seen = HashSet::new();
                    for name in fault.groups.iter().flatten() {
                        known(&what, name)?;
                        if !seen.insert(name.as_str()) {
                            return invalid(format!("{what}: `{name}` is in two groups"));
                        }
                    }
                }
                _ => known(&what, &fault.peer)?,
            }
            if fault.kind == FaultKind::Loss && !(1..=100).contains(&fault.percent) {
                return invalid(format!("{what}: percent must be 1 to 100"));
            }
            if fault.kind == FaultKind::Leave {
                let Some(share) = self.shares.iter().find(|s| s.name == fault.share) else {
                    return invalid(format!("{what}: unknown share `{}`", fault.share));
                };
                if !share.members.contains(&fault.peer) {
                    return invalid(format!(
                        "{what}: `{}` is not a member of `{}`",
                        fault.peer, share.name
                    ));
                }
            }
            if fault.kind == FaultKind::DiskFull
                && !self.topology.small_disks.contains_key(&fault.peer)
            {
                return invalid(format!(
                    "{what}: `{}` has no small disk to fill (topology.small_disks)",
                    fault.peer
                ));
            }
            if fault.kind == FaultKind::Rate && fault.kbit == 0 {
                return invalid(format!("{what}: kbit must be above 0"));
            }
        }
        Ok(())
    }

    /// `topology.lans` and `topology.bootstrap`: for kind `lans` only; every peer on exactly
    /// one LAN, at least two LANs.
    fn check_lans(
        &self,
        known: &dyn Fn(&str, &str) -> Result<(), ScenarioError>,
    ) -> Result<(), ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        let topology = &self.topology;
        if topology.kind != TopologyKind::Lans {
            if !topology.lans.is_empty() || !topology.bootstrap.is_empty() {
                return invalid(
                    "topology.lans and topology.bootstrap go with kind \"lans\" only".into(),
                );
            }
            return Ok(());
        }
        if topology.lans.len() < 2 || topology.lans.iter().any(Vec::is_empty) {
            return invalid("topology.lans: at least 2 LANs, each with a peer".into());
        }
        let mut placed = HashSet::new();
        for name in topology.lans.iter().flatten() {
            known("topology.lans", name)?;
            if !placed.insert(name.as_str()) {
                return invalid(format!("topology.lans: `{name}` is on two LANs"));
            }
        }
        if let Some(name) = topology.peers.iter().find(|p| !placed.contains(p.as_str())) {
            return invalid(format!("topology.lans: `{name}` is on no LAN"));
        }
        for name in &topology.bootstrap {
            known("topology.bootstrap", name)?;
        }
        Ok(())
    }

    /// How long the workloads take at their rates (they run side by side).
    pub fn workload_time(&self) -> Duration {
        self.workloads
            .iter()
            .map(|w| Duration::from_secs_f64(f64::from(w.ops) / w.rate))
            .max()
            .unwrap_or_default()
    }
}

fn simple_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Durations written as `500ms`, `3s`, `2m` (or a number of seconds).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        let bad = |t: &str| D::Error::custom(format!("bad duration `{t}` (like 500ms, 3s, 2m)"));
        let seconds = match Raw::deserialize(d)? {
            Raw::Seconds(s) => s,
            Raw::Text(t) => {
                let (number, unit) = t
                    .find(|c: char| c.is_ascii_alphabetic())
                    .map(|i| t.split_at(i))
                    .ok_or_else(|| bad(&t))?;
                let number: f64 = number.trim().parse().map_err(|_| bad(&t))?;
                match unit {
                    "ms" => number / 1000.0,
                    "s" => number,
                    "m" => number * 60.0,
                    _ => return Err(bad(&t)),
                }
            }
        };
        if !(0.0..=86_400.0).contains(&seconds) {
            return Err(D::Error::custom(format!(
                "duration {seconds} s is out of range (0 to one day)"
            )));
        }
        Ok(Duration::from_secs_f64(seconds))
    }
}

/// Sizes written as `512`, `64KiB`, `8MiB`.
mod size {
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        let bad = |t: &str| D::Error::custom(format!("bad size `{t}` (like 512, 64KiB, 8MiB)"));
        let bytes = match Raw::deserialize(d)? {
            Raw::Bytes(b) => b,
            Raw::Text(t) => {
                let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
                let (number, unit) = t.split_at(split);
                let number: u64 = number.trim().parse().map_err(|_| bad(&t))?;
                let scale = match unit {
                    "" | "B" => 1,
                    "KiB" => 1 << 10,
                    "MiB" => 1 << 20,
                    "GiB" => 1 << 30,
                    _ => return Err(bad(&t)),
                };
                number.checked_mul(scale).ok_or_else(|| bad(&t))?
            }
        };
        if bytes > 4 << 30 {
            return Err(D::Error::custom("sizes above 4 GiB are not supported"));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = r#"
        name = "smoke"
        seed = 7
        converge_timeout = "90s"
        [topology]
        kind = "loopback"
        peers = ["a", "b", "c"]
        [[share]]
        name = "docs"
        kind = "folder"
        members = ["a", "b", "c"]
        [[workload]]
        share = "docs"
        peers = ["a", "b"]
        ops = 100
        rate = 20
        mix = { create = 3, edit = 2, delete = 1 }
        big_size = "2MiB"
        [[fault]]
        at = "1.5s"
        kind = "kill"
        peer = "c"
        for = "500ms"
    "#;

    fn error(text: &str) -> String {
        Scenario::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_scenario_reads_with_its_durations_and_sizes() {
        let s = Scenario::parse(SMOKE).unwrap();
        assert_eq!(s.converge_timeout, Duration::from_secs(90));
        assert_eq!(s.faults[0].at, Duration::from_millis(1500));
        assert_eq!(s.faults[0].lasts, Duration::from_millis(500));
        assert_eq!(s.workloads[0].big_size, 2 << 20);
        assert_eq!(s.workload_time(), Duration::from_secs(5));
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = error(&SMOKE.replace("seed = 7", "seeed = 7"));
        assert!(e.contains("unknown field `seeed`"), "{e}");
    }

    #[test]
    fn a_bad_time_is_named() {
        let e = error(&SMOKE.replace("\"1.5s\"", "\"soon\""));
        assert!(e.contains("bad duration `soon`"), "{e}");
        let e = error(&SMOKE.replace("\"500ms\"", "\"5 fortnights\""));
        assert!(e.contains("bad duration"), "{e}");
    }

    #[test]
    fn an_unknown_peer_is_named_with_the_known_ones() {
        let e = error(&SMOKE.replace("peer = \"c\"", "peer = \"zed\""));
        assert!(
            e.contains("unknown peer `zed`") && e.contains("a, b, c"),
            "{e}"
        );
        let e = error(&SMOKE.replace(
            "members = [\"a\", \"b\", \"c\"]",
            "members = [\"a\", \"x\"]",
        ));
        assert!(e.contains("unknown peer `x`"), "{e}");
    }

    #[test]
    fn a_workload_must_fit_its_share() {
        let e = error(&SMOKE.replace("share = \"docs\"", "share = \"nope\""));
        assert!(e.contains("unknown share `nope`"), "{e}");
        let e = error(&SMOKE.replace("create = 3", "put = 3"));
        assert!(e.contains("mix takes create"), "{e}");
        let e = error(&SMOKE.replace("kind = \"kill\"", "kind = \"meteor\""));
        assert!(e.contains("meteor"), "{e}");
        let e = error(&SMOKE.replace("kind = \"kill\"", "kind = \"loss\"\npercent = 10"));
        assert!(e.contains("need topology kind \"lan\""), "{e}");
    }

    #[test]
    fn a_partition_names_known_peers_once_each() {
        let lan = SMOKE.replace("kind = \"loopback\"", "kind = \"lan\"");
        let partition = |groups: &str| {
            lan.replace(
                "kind = \"kill\"\n        peer = \"c\"",
                &format!("kind = \"partition\"\n        groups = {groups}"),
            )
        };
        assert!(Scenario::parse(&partition(r#"[["a"], ["b", "c"]]"#)).is_ok());
        let e = error(&partition(r#"[["a", "b"], ["b", "c"]]"#));
        assert!(e.contains("`b` is in two groups"), "{e}");
        let e = error(&partition(r#"[["a"], ["x"]]"#));
        assert!(e.contains("unknown peer `x`"), "{e}");
        let e = error(&partition(r#"[["a", "b", "c"]]"#));
        assert!(e.contains("at least 2 groups"), "{e}");
    }

    #[test]
    fn a_disk_full_fault_needs_a_small_disk_of_a_known_peer() {
        let full = SMOKE.replace("kind = \"kill\"", "kind = \"disk-full\"");
        let e = error(&full);
        assert!(e.contains("`c` has no small disk"), "{e}");
        let with_disk = |disks: &str| {
            full.replace(
                "peers = [\"a\", \"b\", \"c\"]",
                &format!("peers = [\"a\", \"b\", \"c\"]\n        small_disks = {disks}"),
            )
        };
        let s = Scenario::parse(&with_disk(r#"{ c = "32MiB" }"#)).unwrap();
        assert_eq!(s.topology.small_disks["c"], Size(32 << 20));
        let e = error(&with_disk(r#"{ zed = "32MiB" }"#));
        assert!(e.contains("small_disks: unknown peer `zed`"), "{e}");
        let e = error(&with_disk(r#"{ c = "4KiB" }"#));
        assert!(e.contains("at least 1MiB"), "{e}");
        let e = error(&with_disk(r#"{ c = "lots" }"#));
        assert!(e.contains("bad size `lots`"), "{e}");
    }

    #[test]
    fn lans_place_every_peer_on_one_lan() {
        let lans = |extra: &str| {
            SMOKE.replace(
                "kind = \"loopback\"",
                &format!("kind = \"lans\"\n        {extra}"),
            )
        };
        let s = Scenario::parse(&lans(r#"lans = [["a", "b"], ["c"]]"#)).unwrap();
        assert_eq!(s.topology.host_order(), ["a", "b", "c"]);
        assert_eq!(s.topology.bootstrap_peers(), ["a"]);
        let s = Scenario::parse(&lans(
            "lans = [[\"c\"], [\"b\", \"a\"]]\n        bootstrap = [\"b\"]",
        ))
        .unwrap();
        assert_eq!(s.topology.host_order(), ["c", "b", "a"]);
        assert_eq!(s.topology.bootstrap_peers(), ["b"]);
        let e = error(&lans(r#"lans = [["a", "b"]]"#));
        assert!(e.contains("at least 2 LANs"), "{e}");
        let e = error(&lans(r#"lans = [["a", "b"], ["b", "c"]]"#));
        assert!(e.contains("`b` is on two LANs"), "{e}");
        let e = error(&lans(r#"lans = [["a"], ["b"]]"#));
        assert!(e.contains("`c` is on no LAN"), "{e}");
        let e = error(&lans(
            "lans = [[\"a\"], [\"b\", \"c\"]]\n        bootstrap = [\"zed\"]",
        ));
        assert!(e.contains("topology.bootstrap: unknown peer `zed`"), "{e}");
        let e = error(&SMOKE.replace(
            "peers = [\"a\", \"b\", \"c\"]",
            "peers = [\"a\", \"b\", \"c\"]\n        lans = [[\"a\"], [\"b\", \"c\"]]",
        ));
        assert!(e.contains("kind \"lans\" only"), "{e}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lab");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let scenario =
                    Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                names.push(scenario.name);
            }
        }
        names.sort();
        for wanted in [
            "churn",
            "crashy",
            "lan5",
            "loopback-smoke",
            "lossy",
            "partition-heal",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing: {names:?}"
            );
        }
    }
}
