//! What a scenario becomes where this machine does not allow all of it: without root (or `ip`,
//! nftables) the peers run on loopback and the network faults are skipped; without root for a
//! small tmpfs, the small disks and their disk-full faults are skipped; without libfaketime the
//! clock offsets are. Each thing left out is said in the report's `skipped`, so a run that
//! passed is never taken for one that tested what it did not.

use super::scenario::{FaultKind, Scenario, TopologyKind};

/// Faults that need the peers in network namespaces.
fn needs_namespaces(kind: FaultKind) -> bool {
    matches!(
        kind,
        FaultKind::Loss | FaultKind::Rate | FaultKind::Partition
    )
}

/// Runs the peers of a `lan` or `lans` scenario on loopback instead (each a static peer of the
/// others), without the faults that need namespaces. `why`: what was missing.
pub(super) fn on_loopback(scenario: &mut Scenario, why: &str, skipped: &mut Vec<String>) {
    skipped.push(format!("topology: ran on loopback instead ({why})"));
    scenario.topology.kind = TopologyKind::Loopback;
    skip_faults(
        scenario,
        needs_namespaces,
        "needs network namespaces",
        skipped,
    );
}

/// Drops the small disks and their disk-full faults. `why`: what was missing.
pub(super) fn without_small_disks(scenario: &mut Scenario, why: &str, skipped: &mut Vec<String>) {
    let peers: Vec<&str> = scenario
        .topology
        .small_disks
        .keys()
        .map(String::as_str)
        .collect();
    skipped.push(format!(
        "small disks of {}: not mounted ({why})",
        peers.join(", ")
    ));
    scenario.topology.small_disks.clear();
    let kind = |k: FaultKind| k == FaultKind::DiskFull;
    skip_faults(scenario, kind, "needs a small disk", skipped);
}

/// Runs every peer with the machine's clock. `why`: what was missing.
pub(super) fn without_clock_offsets(scenario: &mut Scenario, why: &str, skipped: &mut Vec<String>) {
    let peers: Vec<&str> = scenario
        .topology
        .clock_offsets
        .keys()
        .map(String::as_str)
        .collect();
    skipped.push(format!(
        "clock offsets of {}: not applied ({why})",
        peers.join(", ")
    ));
    scenario.topology.clock_offsets.clear();
}

fn skip_faults(
    scenario: &mut Scenario,
    skip: impl Fn(FaultKind) -> bool,
    why: &str,
    skipped: &mut Vec<String>,
) {
    scenario.faults.retain(|fault| {
        if !skip(fault.kind) {
            return true;
        }
        skipped.push(format!(
            "fault {} at {:.1} s: skipped ({why})",
            fault.kind.name(),
            fault.at.as_secs_f64()
        ));
        false
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lan_scenario_on_loopback_keeps_only_the_faults_loopback_can_do() {
        let text = r#"
            name = "t"
            [topology]
            kind = "lan"
            peers = ["a", "b", "c"]
            [[share]]
            name = "docs"
            kind = "folder"
            members = ["a", "b", "c"]
            [[fault]]
            at = "1s"
            kind = "partition"
            groups = [["a"], ["b", "c"]]
            for = "2s"
            [[fault]]
            at = "2s"
            kind = "kill"
            peer = "b"
            for = "1s"
            [[fault]]
            at = "3s"
            kind = "loss"
            peer = "c"
            percent = 10
            for = "1s"
        "#;
        let mut scenario = Scenario::parse(text).unwrap();
        let mut skipped = Vec::new();
        on_loopback(&mut scenario, "not root", &mut skipped);
        assert_eq!(scenario.topology.kind, TopologyKind::Loopback);
        let kinds: Vec<&str> = scenario.faults.iter().map(|f| f.kind.name()).collect();
        assert_eq!(kinds, ["kill"]);
        assert_eq!(
            skipped,
            [
                "topology: ran on loopback instead (not root)",
                "fault partition at 1.0 s: skipped (needs network namespaces)",
                "fault loss at 3.0 s: skipped (needs network namespaces)",
            ]
        );
    }
}
