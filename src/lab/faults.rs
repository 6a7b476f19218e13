//! Carrying out a scenario's faults on the running peers: begun and ended on the timeline.

use super::peers::{LabPeer, folder_of};
use super::scenario::{Fault, FaultKind, Scenario, ShareKindSpec};
use super::{LabError, disk, host, netns, peer_mut};

/// Whether a fault begins or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Edge {
    Begin,
    End,
}

/// Begins or ends a fault.
pub(super) fn apply_fault(
    scenario: &Scenario,
    fault: &Fault,
    peers: &mut [LabPeer],
    lan: Option<&netns::Lan>,
    disks: &[(String, disk::SmallDisk)],
    edge: Edge,
) -> Result<(), LabError> {
    let begin = edge == Edge::Begin;
    let network = |act: &dyn Fn(&netns::Lan) -> Result<(), String>| match lan {
        Some(lan) => act(lan).map_err(LabError::Setup),
        None => Err(LabError::Setup(
            "a network fault without a namespace LAN".into(),
        )),
    };
    // Not for partitions: they name no peer.
    let name = fault.peer.as_str();
    match fault.kind {
        FaultKind::Kill if begin => peer_mut(peers, name).kill(),
        FaultKind::Kill => peer_mut(peers, name).start()?,
        FaultKind::Pause if begin => peer_mut(peers, name).pause(),
        FaultKind::Pause => peer_mut(peers, name).resume(),
        FaultKind::Leave if begin => {
            let p = peer_mut(peers, name);
            let _: serde_json::Value = p
                .post(
                    &format!("/v1/shares/{}/leave", fault.share),
                    &serde_json::json!({}),
                )
                .map_err(|e| LabError::Api(p.name.clone(), e.to_string()))?;
            p.left.insert(fault.share.clone());
        }
        FaultKind::Leave => rejoin(scenario, fault, peers)?,
        FaultKind::Loss => {
            let percent = if begin { fault.percent } else { 0 };
            network(&|lan| lan.loss(host(scenario, &fault.peer), percent))?;
        }
        FaultKind::Rate => {
            let kbit = if begin { fault.kbit } else { 0 };
            network(&|lan| lan.rate(host(scenario, &fault.peer), kbit))?;
        }
        FaultKind::Partition if begin => {
            let groups: Vec<Vec<usize>> = fault
                .groups
                .iter()
                .map(|g| g.iter().map(|name| host(scenario, name)).collect())
                .collect();
            let groups: Vec<&[usize]> = groups.iter().map(Vec::as_slice).collect();
            network(&|lan| lan.partition(&groups))?;
        }
        FaultKind::Partition => network(&|lan| {
            lan.heal();
            Ok(())
        })?,
        FaultKind::DiskFull => {
            let (_, small) = disks
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| LabError::Setup(format!("{name} has no small disk")))?;
            if begin { small.fill() } else { small.drain() }.map_err(LabError::Setup)?;
        }
    }
    Ok(())
}

/// Joins a peer that left a share again, with a token from another member that is up.
fn rejoin(scenario: &Scenario, fault: &Fault, peers: &mut [LabPeer]) -> Result<(), LabError> {
    use crate::api::records::JoinShare;
    use crate::engine::CreatedShare;
    let share = scenario
        .shares
        .iter()
        .find(|s| s.name == fault.share)
        .ok_or_else(|| LabError::Setup(format!("no share {}", fault.share)))?;
    let read_only = share.read_only.contains(&fault.peer);
    let giver = peers
        .iter()
        .find(|p| {
            share.members.contains(&p.name)
                && p.name != fault.peer
                && !share.read_only.contains(&p.name)
                && p.is_up()
                && !p.left.contains(&share.name)
        })
        .ok_or_else(|| {
            LabError::Setup(format!(
                "no member of {} is up to hand {} a token",
                share.name, fault.peer
            ))
        })?;
    let answer: serde_json::Value = giver
        .get(&format!(
            "/v1/shares/{}/token?read_only={read_only}",
            share.name
        ))
        .map_err(|e| LabError::Api(giver.name.clone(), e.to_string()))?;
    let token = answer["token"]
        .as_str()
        .ok_or_else(|| LabError::Setup("no token in the answer".into()))?
        .to_owned();
    let p = peer_mut(peers, &fault.peer);
    let kind = match share.kind {
        ShareKindSpec::Folder => crate::store::ShareKind::Folder,
        ShareKindSpec::Records => crate::store::ShareKind::Records,
    };
    let path = (share.kind == ShareKindSpec::Folder).then(|| folder_of(p, &share.name));
    let _: CreatedShare = p
        .post(
            "/v1/shares/join",
            &JoinShare {
                token,
                name: share.name.clone(),
                kind,
                path,
            },
        )
        .map_err(|e| LabError::Api(p.name.clone(), e.to_string()))?;
    p.left.remove(&share.name);
    Ok(())
}
