//! `meshsync lab`: scripted multi-peer scenarios with faults, for users and for CI.
//!
//! A scenario file ([`scenario`]) says which peers to start, which shares they hold, what
//! operations to run on them ([`workload`]) and what to break when (kill -9 and restart, SIGSTOP
//! and SIGCONT). The lab starts real daemons — this very binary, each with a home of its own —
//! runs the timeline, samples the folders for torn files as it goes, brings every peer back,
//! waits for convergence and checks the invariants ([`check`]); the [`Report`] says what held,
//! what did not (with evidence) and what it cost. Every process it starts, it stops; its
//! directory goes too unless an invariant failed (then it is kept as evidence).
//!
//! The lab is a client of the daemons, like the CLI: it knows them only through their API, their
//! files and their exit.

pub mod check;
pub mod disk;
mod fallback;
mod faults;
pub mod netns;
pub mod peers;
pub mod probes;
mod report;
pub mod scenario;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_pcg::Pcg64;

use check::Violation;
use faults::{Edge, apply_fault};
use peers::{LabPeer, folder_of, traffic};
pub use report::{FaultReport, PeerReport, Report};
use scenario::{FaultKind, Scenario, ShareKindSpec, TopologyKind};
use workload::Ledger;

/// How often folders are sampled for torn files while the workload runs.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Violations listed per invariant in a report (the rest are only counted).
pub const MAX_LISTED_VIOLATIONS: usize = 100;
/// Longest wait for a share's members to find each other before the workload starts.
pub const MEMBERS_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the lab could not run a scenario (as opposed to a scenario whose invariants failed).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The scenario file is wrong.
    #[error("bad scenario: {0}")]
    Scenario(#[from] scenario::ScenarioError),
    /// Setting up the peers or shares failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A file operation of the lab itself failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What the lab was doing.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A daemon's API failed where the lab needed it.
    #[error("the API of {0} failed: {1}")]
    Api(String, String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// What the scenario needs cannot be had here (root, network namespaces, nftables).
    #[error("{0}")]
    Privileges(String),
}

impl LabError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LabError {
        move |source| LabError::Io { what, source }
    }
}

/// A step on the timeline.
enum Step {
    Op(usize),
    FaultStart(usize),
    FaultEnd(usize),
    /// The edit-beats-delete probes of a fault.
    Probe(usize),
}

/// Runs a scenario with peers under `dir` (created, and removed unless a violation is found or
/// `keep` asks for it). `stop` is set by Ctrl-C: the run ends, everything is stopped and
/// removed.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    dir: &Path,
    keep: bool,
    stop: &AtomicBool,
) -> Result<Report, LabError> {
    std::fs::create_dir_all(dir).map_err(LabError::io("create the lab directory"))?;
    let mut result = run_in(scenario, seed, dir, stop);
    let keep = match &mut result {
        Ok(report) if keep && !stop.load(Ordering::Relaxed) => {
            report.kept_dir = Some(dir.display().to_string());
            true
        }
        Ok(report) => !report.passed,
        Err(_) => false,
    };
    if !keep {
        let _ = std::fs::remove_dir_all(dir);
    } else if let Ok(report) = &result {
        // Beside the homes and logs it concerns: the caller's `--json` may be gone by the time
        // someone looks (a test's temporary directory).
        let _ = std::fs::write(dir.join("report.txt"), report.text());
        if let Ok(json) = serde_json::to_vec_pretty(report) {
            let _ = std::fs::write(dir.join("report.json"), json);
        }
    }
    result
}

fn run_in(
    scenario: &Scenario,
    seed: u64,
    dir: &Path,
    stop: &AtomicBool,
) -> Result<Report, LabError> {
    let began = Instant::now();
    let interrupted = || stop.load(Ordering::Relaxed);
    // What this machine cannot do is left out and said (see `fallback`).
    let mut adapted = scenario.clone();
    let mut skipped = Vec::new();
    if !adapted.topology.clock_offsets.is_empty()
        && let Err(e) = peers::clock_wrapper(0)
    {
        let why = format!("needs libfaketime: {e}");
        fallback::without_clock_offsets(&mut adapted, &why, &mut skipped);
    }
    // Declared before the peers, so it is deleted after they stopped.
    let lan = match adapted.topology.kind {
        TopologyKind::Loopback => None,
        TopologyKind::Lan | TopologyKind::Lans => match build_lan(&adapted) {
            Ok(lan) => Some(lan),
            Err(LabError::Privileges(why)) => {
                fallback::on_loopback(&mut adapted, &why, &mut skipped);
                None
            }
            Err(e) => return Err(e),
        },
    };
    let mut scenario = &adapted;
    // Declared before the peers, so they are unmounted after the daemons stopped.
    let mut disks: Vec<(String, disk::SmallDisk)> = Vec::new();
    let mut peers: Vec<LabPeer> = scenario
        .topology
        .peers
        .iter()
        .map(|name| {
            let place = match &lan {
                None => peers::Place::Loopback,
                Some(lan) => {
                    let i = host(scenario, name);
                    peers::Place::Namespace {
                        name: lan.hosts[i].clone(),
                        address: lan.address(i),
                    }
                }
            };
            let clock = scenario.topology.clock_offsets.get(name).copied();
            LabPeer::init(dir, name, place, clock)
        })
        .collect::<Result<_, _>>()?;
    let mut disks_refused = None;
    for (name, size) in &scenario.topology.small_disks {
        let at = peer(&peers, name).home.dir().join("folders");
        match disk::SmallDisk::mount(&at, size.0) {
            Ok(mounted) => disks.push((name.clone(), mounted)),
            Err(why) => {
                disks_refused = Some(why);
                break;
            }
        }
    }
    let without_disks;
    if let Some(why) = disks_refused {
        disks.clear();
        let mut changed = scenario.clone();
        fallback::without_small_disks(&mut changed, &why, &mut skipped);
        without_disks = changed;
        scenario = &without_disks;
    }

    // Bootstrap peers first: the others' configs name their addresses.
    let bootstrap = scenario.topology.bootstrap_peers();
    peers.sort_by_key(|p| !bootstrap.contains(&p.name.as_str()));
    for i in 0..peers.len() {
        if !bootstrap.contains(&peers[i].name.as_str()) {
            for boot in peers
                .iter()
                .filter(|p| bootstrap.contains(&p.name.as_str()))
            {
                peers[i].bootstrap_from(boot)?;
            }
        }
        peers[i].start()?;
        if interrupted() {
            return Err(LabError::Interrupted);
        }
    }
    peers.sort_by_key(|p| position(scenario, &p.name));
    // On a LAN they find each other by mDNS.
    if lan.is_none() {
        for a in &peers {
            for b in peers.iter().filter(|b| b.name != a.name) {
                a.know(b)?;
            }
        }
    }
    set_up_shares(scenario, &peers, stop)?;

    let kind_of = |share: &str| {
        scenario
            .shares
            .iter()
            .find(|s| s.name == share)
            .map_or(ShareKindSpec::Records, |s| s.kind)
    };
    let ops = workload::timeline(&scenario.workloads, kind_of);
    let mut steps: Vec<(f64, Step)> = ops
        .iter()
        .enumerate()
        .map(|(i, (at, _))| (*at, Step::Op(i)))
        .collect();
    let mut probes = probes::plan(scenario);
    for (i, fault) in scenario.faults.iter().enumerate() {
        steps.push((fault.at.as_secs_f64(), Step::FaultStart(i)));
        steps.push(((fault.at + fault.lasts).as_secs_f64(), Step::FaultEnd(i)));
        if let Some(at) = probes::probe_time(fault)
            && probes.iter().any(|p| p.fault == i)
        {
            steps.push((at, Step::Probe(i)));
        }
    }
    // Stable: a probe halfway through a fault comes after what is due at the same time.
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));

    let mut rng = Pcg64::seed_from_u64(seed);
    let mut ledger = Ledger::default();
    // Their own random stream, so they leave the seeded workload as it was.
    let mut probe_rng = Pcg64::seed_from_u64(seed ^ 0x7072_6f62_6573);
    probes::create(
        &probes,
        scenario,
        &peers,
        seed,
        &mut probe_rng,
        &mut ledger,
        stop,
    )?;
    let mut violations = Vec::new();
    let mut faults = Vec::new();
    let mut samples = 0;
    let start = Instant::now();
    let mut next_sample = start + SAMPLE_INTERVAL;
    for (at, step) in &steps {
        let due = start + Duration::from_secs_f64(*at);
        while Instant::now() < due {
            if interrupted() {
                return Err(LabError::Interrupted);
            }
            if Instant::now() >= next_sample {
                samples += 1;
                let at_s = start.elapsed().as_secs_f64();
                violations.extend(sample_torn(scenario, &peers, &ledger, at_s));
                next_sample = Instant::now() + SAMPLE_INTERVAL;
            }
            std::thread::sleep((due - Instant::now().min(due)).min(Duration::from_millis(20)));
        }
        match step {
            Step::Op(i) => workload::run(&ops[*i].1, &peers, seed, &mut rng, &mut ledger),
            Step::FaultStart(i) => {
                let fault = &scenario.faults[*i];
                apply_fault(
                    scenario,
                    fault,
                    &mut peers,
                    lan.as_ref(),
                    &disks,
                    Edge::Begin,
                )?;
                let peer = if fault.kind == FaultKind::Partition {
                    let groups: Vec<String> = fault.groups.iter().map(|g| g.join(",")).collect();
                    groups.join(" | ")
                } else {
                    fault.peer.clone()
                };
                faults.push(FaultReport {
                    at_s: start.elapsed().as_secs_f64(),
                    kind: fault.kind.name().to_owned(),
                    peer,
                    for_s: fault.lasts.as_secs_f64(),
                });
            }
            Step::FaultEnd(i) => {
                let fault = &scenario.faults[*i];
                apply_fault(scenario, fault, &mut peers, lan.as_ref(), &disks, Edge::End)?;
            }
            Step::Probe(i) => {
                let at_s = start.elapsed().as_secs_f64();
                probes::carry_out(
                    &mut probes,
                    *i,
                    scenario,
                    &peers,
                    seed,
                    &mut probe_rng,
                    &mut ledger,
                    at_s,
                );
            }
        }
    }
    // Everyone back before convergence is judged.
    for peer in &mut peers {
        peer.resume();
        peer.start()?;
    }
    let quiet_since = Instant::now();
    let converged = wait_converged(scenario, &peers, quiet_since, stop, &mut samples)?;
    let at_s = start.elapsed().as_secs_f64();
    let converged_after_s = match &converged {
        Ok(after) => Some(after.as_secs_f64()),
        Err(evidence) => {
            violations.push(evidence.clone());
            None
        }
    };
    violations.extend(sample_torn(scenario, &peers, &ledger, at_s));
    violations.extend(final_checks(scenario, &peers, &ledger, seed, at_s));
    violations.extend(probes::check(&probes, scenario, &peers, at_s));
    let conflicts = count_conflicts(scenario, &peers);
    let peer_reports = peers
        .iter()
        .map(|p| {
            let (sent, received, (sessions, rounds), connected) = match p.status() {
                Ok(status) => {
                    let (s, r) = traffic(&status);
                    let connected = status
                        .peers
                        .iter()
                        .filter_map(|c| {
                            let name = &peers.iter().find(|o| o.id.to_string() == c.peer_id)?.name;
                            let how = serde_json::to_value(c.found_by).ok()?;
                            Some((name.clone(), how.as_str()?.to_owned()))
                        })
                        .collect();
                    let sessions = status.shares.iter().map(|s| s.sessions).sum();
                    let rounds = status.shares.iter().map(|s| s.rounds).sum();
                    (s, r, (sessions, rounds), connected)
                }
                Err(_) => (0, 0, (0, 0), BTreeMap::new()),
            };
            PeerReport {
                name: p.name.clone(),
                peer_id: p.id.to_string(),
                bytes_sent: sent + p.bytes_before.0,
                bytes_received: received + p.bytes_before.1,
                sessions,
                rounds,
                connected,
            }
        })
        .collect();
    for peer in &mut peers {
        peer.stop();
    }
    let passed = violations.is_empty();
    let (violations, violations_total) = condense(violations);
    Ok(Report {
        scenario: scenario.name.clone(),
        seed,
        passed,
        converged_after_s,
        violations,
        violations_total,
        peers: peer_reports,
        faults,
        ops_done: ledger.done,
        ops_skipped: ledger.skipped,
        ops_failed: ledger.failed,
        samples,
        conflicts,
        probes: probes.iter().filter(|p| p.done.is_some()).count() as u64,
        duration_s: began.elapsed().as_secs_f64(),
        kept_dir: (!passed).then(|| dir.display().to_string()),
        skipped,
    })
}

/// Each violation once (a torn file seen by many samples is one), at most
/// [`MAX_LISTED_VIOLATIONS`] per invariant; and how many distinct ones there were.
fn condense(all: Vec<Violation>) -> (Vec<Violation>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut per_invariant: std::collections::HashMap<&'static str, usize> = Default::default();
    let mut total = 0;
    let mut listed = Vec::new();
    for v in all {
        if !seen.insert((v.invariant, v.peer.clone(), v.share.clone(), v.item.clone())) {
            continue;
        }
        total += 1;
        let count = per_invariant.entry(v.invariant).or_default();
        *count += 1;
        if *count <= MAX_LISTED_VIOLATIONS {
            listed.push(v);
        }
    }
    (listed, total)
}

/// The namespace LAN for a `lan` scenario: root, `ip` and (for network faults) `nft` needed.
fn build_lan(scenario: &Scenario) -> Result<netns::Lan, LabError> {
    let missing = |why: String| {
        LabError::Privileges(format!(
            "namespaced topologies need root, `ip` (iproute2) and nftables: {why}"
        ))
    };
    let network_faults = scenario
        .faults
        .iter()
        .any(|f| matches!(f.kind, FaultKind::Loss | FaultKind::Partition));
    if network_faults {
        netns::Lan::nft_available().map_err(missing)?;
    }
    match scenario.topology.kind {
        TopologyKind::Lans => {
            let sizes: Vec<usize> = scenario.topology.lans.iter().map(Vec::len).collect();
            netns::Lan::create_routed(&sizes).map_err(missing)
        }
        _ => netns::Lan::create(scenario.topology.peers.len()).map_err(missing),
    }
}

/// The host index of a peer on the LAN(s).
fn host(scenario: &Scenario, name: &str) -> usize {
    scenario
        .topology
        .host_order()
        .iter()
        .position(|p| *p == name)
        .expect("checked by the scenario")
}

/// Where a peer is listed in `topology.peers`.
fn position(scenario: &Scenario, name: &str) -> usize {
    scenario
        .topology
        .peers
        .iter()
        .position(|p| p == name)
        .expect("checked by the scenario")
}

fn peer_mut<'a>(peers: &'a mut [LabPeer], name: &str) -> &'a mut LabPeer {
    peers
        .iter_mut()
        .find(|p| p.name == name)
        .expect("checked by the scenario")
}

fn peer<'a>(peers: &'a [LabPeer], name: &str) -> &'a LabPeer {
    peers
        .iter()
        .find(|p| p.name == name)
        .expect("checked by the scenario")
}

/// Creates each share on its first member and joins the others, then waits until the creator
/// sees every other member.
fn set_up_shares(
    scenario: &Scenario,
    peers: &[LabPeer],
    stop: &AtomicBool,
) -> Result<(), LabError> {
    use crate::api::records::{CreateShare, JoinShare};
    use crate::engine::CreatedShare;
    use crate::store::ShareKind;
    let api = |p: &LabPeer, e: peers::CallError| LabError::Api(p.name.clone(), e.to_string());
    for share in &scenario.shares {
        let kind = match share.kind {
            ShareKindSpec::Folder => ShareKind::Folder,
            ShareKindSpec::Records => ShareKind::Records,
        };
        let path_for = |p: &LabPeer| (kind == ShareKind::Folder).then(|| folder_of(p, &share.name));
        let creator = peer(peers, &share.members[0]);
        let created: CreatedShare = creator
            .post(
                "/v1/shares",
                &CreateShare {
                    name: share.name.clone(),
                    kind,
                    path: path_for(creator),
                },
            )
            .map_err(|e| api(creator, e))?;
        let token = |read_only: bool| -> Result<String, LabError> {
            let answer: serde_json::Value = creator
                .get(&format!(
                    "/v1/shares/{}/token?read_only={read_only}",
                    created.id
                ))
                .map_err(|e| api(creator, e))?;
            answer["token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| LabError::Setup("no token in the answer".into()))
        };
        let (mut rw, mut ro) = (token(false)?, token(true)?);
        if scenario.topology.kind == TopologyKind::Lans {
            // Members across the router must find each other through the DHT alone.
            for token in [&mut rw, &mut ro] {
                *token = without_addresses(token)?;
            }
        }
        for name in &share.members[1..] {
            let member = peer(peers, name);
            let token = if share.read_only.contains(name) {
                &ro
            } else {
                &rw
            };
            let _: CreatedShare = member
                .post(
                    "/v1/shares/join",
                    &JoinShare {
                        token: token.clone(),
                        name: share.name.clone(),
                        kind,
                        path: path_for(member),
                    },
                )
                .map_err(|e| api(member, e))?;
        }
        let started = Instant::now();
        loop {
            let status = creator.status()?;
            let members = status
                .shares
                .iter()
                .find(|s| s.name == share.name)
                .map_or(0, |s| s.members.len());
            if members + 1 >= share.members.len() {
                break;
            }
            if started.elapsed() > MEMBERS_TIMEOUT {
                return Err(LabError::Setup(format!(
                    "share {}: {} of {} members found each other within {MEMBERS_TIMEOUT:?}",
                    share.name,
                    members + 1,
                    share.members.len()
                )));
            }
            if stop.load(Ordering::Relaxed) {
                return Err(LabError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A share token with its creator's addresses taken out.
fn without_addresses(token: &str) -> Result<String, LabError> {
    let mut parsed = crate::share::Token::parse(token)
        .map_err(|e| LabError::Setup(format!("a token from the daemon: {e}")))?;
    parsed.addrs.clear();
    Ok(parsed.encode())
}

/// Torn files on every peer that is up, in every folder share it is a member of.
fn sample_torn(
    scenario: &Scenario,
    peers: &[LabPeer],
    ledger: &Ledger,
    at_s: f64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for share in scenario
        .shares
        .iter()
        .filter(|s| s.kind == ShareKindSpec::Folder)
    {
        for name in &share.members {
            let p = peer(peers, name);
            if p.is_up() {
                out.extend(check::torn_files(p, &share.name, ledger, at_s));
            }
        }
    }
    out
}

/// What a share looks like on one member, for comparing.
fn view(share: &scenario::ShareSpec, p: &LabPeer) -> Result<String, String> {
    match share.kind {
        ShareKindSpec::Folder => Ok(format!("{:?}", check::tree(&folder_of(p, &share.name)))),
        ShareKindSpec::Records => check::records(p, &share.name).map(|r| format!("{r:?}")),
    }
}

/// Waits until every member of every share holds the same; the time it took, or a violation
/// naming the first difference.
fn wait_converged(
    scenario: &Scenario,
    peers: &[LabPeer],
    since: Instant,
    stop: &AtomicBool,
    samples: &mut u64,
) -> Result<Result<Duration, Violation>, LabError> {
    loop {
        let mut difference = None;
        'shares: for share in &scenario.shares {
            let first = peer(peers, &share.members[0]);
            let reference = view(share, first);
            for name in &share.members[1..] {
                let other = view(share, peer(peers, name));
                if other != reference || reference.is_err() {
                    difference = Some((share, name.clone()));
                    break 'shares;
                }
            }
        }
        *samples += 1;
        let Some((share, name)) = difference else {
            return Ok(Ok(since.elapsed()));
        };
        if since.elapsed() > scenario.converge_timeout {
            let first = peer(peers, &share.members[0]);
            let detail = match share.kind {
                ShareKindSpec::Folder => check::first_difference(
                    &check::tree(&folder_of(first, &share.name)),
                    &check::tree(&folder_of(peer(peers, &name), &share.name)),
                )
                .unwrap_or_default(),
                ShareKindSpec::Records => "records differ".into(),
            };
            let states = member_states(share, peers);
            return Ok(Err(Violation {
                invariant: "convergence",
                peer: name,
                share: share.name.clone(),
                item: None,
                detail: format!(
                    "not the same as on {} after {:?}: {detail}; {states}",
                    first.name, scenario.converge_timeout
                ),
                at_s: since.elapsed().as_secs_f64(),
            }));
        }
        if stop.load(Ordering::Relaxed) {
            return Err(LabError::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What each member of `share` says of it, for the evidence of a convergence failure: its state,
/// what it still needs and its last error, in one line; each one's whole status is saved as
/// `status-at-failure.json` in its home (kept with the logs).
fn member_states(share: &scenario::ShareSpec, peers: &[LabPeer]) -> String {
    let states: Vec<String> = share
        .members
        .iter()
        .map(|name| {
            let p = peer(peers, name);
            let status = match p.get::<serde_json::Value>("/v1/status") {
                Ok(status) => status,
                Err(e) => return format!("{name}: no status ({e})"),
            };
            let _ = std::fs::write(
                p.home.dir().join("status-at-failure.json"),
                serde_json::to_vec_pretty(&status).unwrap_or_default(),
            );
            let Some(s) = status["shares"]
                .as_array()
                .and_then(|all| all.iter().find(|s| s["name"] == share.name.as_str()))
            else {
                return format!("{name}: share not listed");
            };
            let f = &s["folder"];
            let needed = if f.is_object() {
                format!(
                    ", {} files / {} B needed",
                    f["needed_files"], f["needed_bytes"]
                )
            } else {
                String::new()
            };
            let error = s["last_error"]["message"]
                .as_str()
                .map(|m| format!(", last error: {m}"))
                .unwrap_or_default();
            format!(
                "{name}: {}{needed}{error}",
                s["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    format!("members: {}", states.join("; "))
}

/// The end-of-run invariants: acknowledged writes kept, nothing at non-members.
fn final_checks(
    scenario: &Scenario,
    peers: &[LabPeer],
    ledger: &Ledger,
    seed: u64,
    at_s: f64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for share in &scenario.shares {
        if share.kind == ShareKindSpec::Records
            && let Some(keys) = ledger.keys.get(&share.name)
        {
            for name in &share.members {
                match check::records(peer(peers, name), &share.name) {
                    Ok(records) => {
                        // Only a writer's clock decides which write wins.
                        let skewed = scenario
                            .workloads
                            .iter()
                            .filter(|w| w.share == share.name)
                            .flat_map(|w| &w.peers)
                            .any(|p| scenario.topology.clock_offsets.contains_key(p));
                        out.extend(check::lost_writes(
                            name,
                            &share.name,
                            &records,
                            keys,
                            skewed,
                            at_s,
                        ));
                    }
                    Err(e) => out.push(Violation {
                        invariant: "lost_write",
                        peer: name.clone(),
                        share: share.name.clone(),
                        item: None,
                        detail: format!("cannot list the records: {e}"),
                        at_s,
                    }),
                }
            }
        }
        let marker = workload::marker(seed, &share.name);
        for outsider in peers.iter().filter(|p| !share.members.contains(&p.name)) {
            if let Some(file) = check::leaked(outsider.home.dir(), &marker) {
                out.push(Violation {
                    invariant: "leak",
                    peer: outsider.name.clone(),
                    share: share.name.clone(),
                    item: Some(file),
                    detail: "data of the share at a peer that is not its member".into(),
                    at_s,
                });
            }
        }
    }
    out
}

fn count_conflicts(scenario: &Scenario, peers: &[LabPeer]) -> u64 {
    scenario
        .shares
        .iter()
        .filter(|s| s.kind == ShareKindSpec::Folder)
        .map(|s| {
            check::tree(&folder_of(peer(peers, &s.members[0]), &s.name))
                .keys()
                .filter(|p| p.contains(".sync-conflict-"))
                .count() as u64
        })
        .sum()
}

/// A fresh directory for a run under the system's temp directory.
pub fn fresh_dir() -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::env::temp_dir().join(format!(
        "meshsync-lab-{}-{}",
        std::process::id(),
        now.as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(invariant: &'static str, item: &str) -> Violation {
        Violation {
            invariant,
            peer: "a".into(),
            share: "docs".into(),
            item: Some(item.into()),
            detail: String::new(),
            at_s: 0.0,
        }
    }

    #[test]
    fn each_violation_is_listed_once_and_each_invariant_at_most_its_cap() {
        let mut all = vec![violation("torn_file", "x"); 5];
        all.extend((0..MAX_LISTED_VIOLATIONS + 7).map(|i| violation("lost_write", &i.to_string())));
        let (listed, total) = condense(all);
        assert_eq!(total, 1 + MAX_LISTED_VIOLATIONS + 7);
        assert_eq!(listed.len(), 1 + MAX_LISTED_VIOLATIONS);
        assert_eq!(listed[0].invariant, "torn_file");
    }
}
