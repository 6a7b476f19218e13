//! Degraded networks, black box: real daemons on a LAN of network namespaces this test builds
//! (`support::netlab`), with partitions and loss from nftables and rate limits from `tc tbf`.
//! Each test prints what it measured; the timing goals themselves are checked by
//! `scripts/bench-degraded.sh`, the bounds here only catch the stalls these tests exist for.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::netlab::NetLab;
use support::{FolderShare, Mesh, Node, WAIT, wait_until};

/// Whether `dir/name` holds exactly `len` bytes.
fn has_file(dir: &Path, name: &str, len: usize) -> bool {
    std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == len as u64)
}

/// The value of `key` in records share `share` on `node`, if it has one.
fn kv_get(node: &Node, share: &str, key: &str) -> Option<String> {
    let out = node.cli(&["kv", "get", share, key]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kv_put(node: &Node, share: &str, key: &str, value: &str) {
    let out = node.cli(&["kv", "put", share, key, value]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A records share `name` among all `nodes`, created by the first.
fn share_records(nodes: &[Node], name: &str) {
    let token = nodes[0].create_records_share(name);
    for node in &nodes[1..] {
        node.join_records_share(&token, name);
    }
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    wait_until(
        "every node to see every other as a records member",
        WAIT,
        || {
            nodes.iter().all(|n| {
                let members = n.share_members(name);
                ids.iter()
                    .filter(|id| **id != n.peer_id)
                    .all(|id| members.contains(*id))
            })
        },
    );
}

/// A LAN of `hosts` hosts for `test` with a daemon on each, all connected, sharing a folder
/// (None where the test is skipped).
fn lab_sharing_a_folder(test: &str, hosts: usize) -> Option<(NetLab, Mesh, FolderShare)> {
    let lab = NetLab::for_test(test, hosts, true)?;
    let mesh = lab.mesh();
    mesh.wait_fully_connected();
    let folder = mesh.share_folder();
    Some((lab, mesh, folder))
}

/// While the LAN is split 2 | 3, a file and a record written on the 3-side reach the other two
/// 3-side peers (and the 2-side's reach its other peer) in seconds: nothing waits on the members
/// that went silent. Before liveness and hedging, this took 31-51 s for files and 9-20 s for
/// records, in batches every ~10 s. After healing, everything converges.
#[test]
fn a_partition_does_not_slow_the_healthy_side() {
    let Some((lab, mesh, folder)) =
        lab_sharing_a_folder("a_partition_does_not_slow_the_healthy_side", 5)
    else {
        return;
    };
    share_records(&mesh.nodes, "notes");
    std::fs::write(folder.dirs[0].join("before.txt"), "everyone has this").unwrap();
    kv_put(&mesh.nodes[0], "notes", "before", "everyone");
    folder.wait_identical();
    wait_until("every node to have the first record", WAIT, || {
        mesh.nodes
            .iter()
            .all(|n| kv_get(n, "notes", "before").as_deref() == Some("everyone"))
    });

    lab.partition(&[&[0, 1], &[2, 3, 4]]);
    let cut = Instant::now();
    const BIG: usize = 2 * 1024 * 1024;
    std::fs::write(
        folder.dirs[2].join("three.bin"),
        support::random_bytes(BIG, 3),
    )
    .unwrap();
    std::fs::write(folder.dirs[2].join("three.txt"), "written on the 3-side").unwrap();
    kv_put(&mesh.nodes[2], "notes", "three", "3-side");
    std::fs::write(
        folder.dirs[0].join("two.bin"),
        support::random_bytes(BIG, 2),
    )
    .unwrap();
    kv_put(&mesh.nodes[0], "notes", "two", "2-side");

    // The stall took 31-51 s; the goal is 5 s. The bound leaves room for a loaded machine.
    const HEALTHY_SIDE_BOUND: Duration = Duration::from_secs(25);
    let mut records_at = None;
    wait_until(
        "the healthy sides to sync among themselves",
        HEALTHY_SIDE_BOUND,
        || {
            let records = [3, 4]
                .iter()
                .all(|&i| kv_get(&mesh.nodes[i], "notes", "three").as_deref() == Some("3-side"))
                && kv_get(&mesh.nodes[1], "notes", "two").as_deref() == Some("2-side");
            if records && records_at.is_none() {
                records_at = Some(cut.elapsed());
            }
            let files = [3, 4].iter().all(|&i| {
                has_file(&folder.dirs[i], "three.bin", BIG)
                    && has_file(&folder.dirs[i], "three.txt", 21)
            }) && has_file(&folder.dirs[1], "two.bin", BIG);
            records && files
        },
    );
    let files_in = cut.elapsed();
    // The partition held: nothing crossed it.
    assert!(!folder.dirs[0].join("three.bin").exists());
    assert!(!folder.dirs[3].join("two.bin").exists());
    assert_eq!(kv_get(&mesh.nodes[4], "notes", "two"), None);

    lab.heal();
    let healed = Instant::now();
    folder.wait_identical();
    wait_until(
        "every node to have every record after healing",
        WAIT,
        || {
            mesh.nodes.iter().all(|n| {
                kv_get(n, "notes", "two").as_deref() == Some("2-side")
                    && kv_get(n, "notes", "three").as_deref() == Some("3-side")
            })
        },
    );
    let converged_in = healed.elapsed();
    eprintln!(
        "partition 2|3: records on the healthy side after {:?}, files after {files_in:?}; \
         converged {converged_in:?} after healing",
        records_at.unwrap()
    );
}

/// Sends a 4 MiB file from host 0 to host 1 over a link limited to `kbit` kbit/s each way;
/// returns how long it took and the ideal time (its bytes at the link's rate).
fn transfer_over(kbit: u32, test: &str) -> Option<(Duration, Duration)> {
    let (lab, _mesh, folder) = lab_sharing_a_folder(test, 2)?;
    lab.rate(1, kbit);
    const SIZE: usize = 4 * 1024 * 1024;
    let ideal = Duration::from_secs_f64(SIZE as f64 * 8.0 / (f64::from(kbit) * 1000.0));
    std::fs::write(
        folder.dirs[0].join("big.bin"),
        support::random_bytes(SIZE, 7),
    )
    .unwrap();
    let start = Instant::now();
    // Before progress-based requests, at 320 kbit/s the file had not arrived after 367 s.
    let bound = ideal * 3 + Duration::from_secs(30);
    wait_until("the file to cross the slow link", bound, || {
        has_file(&folder.dirs[1], "big.bin", SIZE)
    });
    let took = start.elapsed();
    assert_eq!(
        std::fs::read(folder.dirs[1].join("big.bin")).unwrap(),
        support::random_bytes(SIZE, 7)
    );
    eprintln!(
        "4 MiB over {kbit} kbit/s: {took:?} (ideal {ideal:?}, {:.2}x)",
        took.as_secs_f64() / ideal.as_secs_f64()
    );
    Some((took, ideal))
}

/// At 320 kbit/s a 4 MiB file makes steady progress and arrives: each request is sized to what
/// the member delivers, so none outlives its timeout while others share the link.
#[test]
fn a_big_file_crosses_a_320_kbit_link() {
    transfer_over(320, "a_big_file_crosses_a_320_kbit_link");
}

/// Over a link too slow for the largest chunk to cross within one request's timeout (40 kbit/s:
/// 256 KiB takes 52 s, a request has 30 s), a file made of such a chunk still arrives: the chunk
/// is fetched in parts sized to what the link delivers. Before, every request for it timed out
/// and nothing arrived, however long one waited: the slowest link a big file could cross was
/// ~70 kbit/s.
#[test]
fn a_chunk_too_big_for_one_request_crosses_a_40_kbit_link() {
    let Some((lab, _mesh, folder)) =
        lab_sharing_a_folder("a_chunk_too_big_for_one_request_crosses_a_40_kbit_link", 2)
    else {
        return;
    };
    // A file whose one chunk is of the largest size: a run of one byte has no cut point.
    let content = vec![0x5a; meshsync::folder::model::CHUNK_MAX as usize];
    let chunks = meshsync::folder::content::hash_reader(&content[..])
        .unwrap()
        .chunks;
    assert_eq!(chunks.len(), 1, "the file is one chunk of the largest size");
    const KBIT: u32 = 40;
    lab.rate(1, KBIT);
    let ideal = Duration::from_secs_f64(content.len() as f64 * 8.0 / (f64::from(KBIT) * 1000.0));
    let start = Instant::now();
    std::fs::write(folder.dirs[0].join("chunk.bin"), &content).unwrap();
    // Generous: several times the ideal time; without parts it never arrives.
    let bound = ideal * 6 + Duration::from_secs(60);
    wait_until("the big chunk to cross the 40 kbit/s link", bound, || {
        has_file(&folder.dirs[1], "chunk.bin", content.len())
    });
    let took = start.elapsed();
    assert_eq!(
        std::fs::read(folder.dirs[1].join("chunk.bin")).unwrap(),
        content
    );
    eprintln!("one 256 KiB chunk over {KBIT} kbit/s: {took:?} (ideal {ideal:?})");
}

/// At 1,600 kbit/s the same file arrives too (the ratio to the ideal time is printed; the
/// benchmark holds it to its goal).
#[test]
fn a_big_file_crosses_a_1600_kbit_link() {
    transfer_over(1600, "a_big_file_crosses_a_1600_kbit_link");
}

/// With 30 % of the receiver's packets lost each way, a sync of 500 small files and an 8 MiB
/// file completes: nothing waits on one request forever, and a member whose requests fail is
/// asked again after a wait that grows. Before, at 30 % loss a 64 MiB file never arrived.
///
/// The file was 16 MiB until 2026-12-05: that took 290–890 s here (TCP at this loss has slow
/// stretches of minutes) and once over the 900 s bound in CI, a timing limit in effect. Half
/// the bytes keep the point (many requests, each of which may fail) with room to spare;
/// `scripts/bench-degraded.sh` reports the time.
#[test]
fn a_sync_completes_at_30_percent_loss() {
    let born = Instant::now();
    let Some((lab, mesh, folder)) = lab_sharing_a_folder("a_sync_completes_at_30_percent_loss", 2)
    else {
        return;
    };
    std::fs::write(folder.dirs[0].join("before.txt"), "before the loss").unwrap();
    folder.wait_identical();
    lab.loss(1, 30);
    let start = Instant::now();
    for i in 0..500u64 {
        let dir = folder.dirs[0].join(format!("d{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 512 + (i as usize * 37) % 4096;
        std::fs::write(dir.join(format!("f{i}.txt")), support::random_bytes(len, i)).unwrap();
    }
    const BIG: usize = 8 * 1024 * 1024;
    std::fs::write(
        folder.dirs[0].join("big.bin"),
        support::random_bytes(BIG, 99),
    )
    .unwrap();
    // Generous: the point is that it completes at all.
    let bound = Duration::from_secs(900);
    let mut small_at = None;
    wait_until("the sync to complete at 30 % loss", bound, || {
        let small = (0..500u64).all(|i| {
            folder.dirs[1]
                .join(format!("d{}/f{i}.txt", i % 20))
                .exists()
        });
        if small && small_at.is_none() {
            small_at = Some(start.elapsed());
        }
        small && has_file(&folder.dirs[1], "big.bin", BIG)
    });
    let took = start.elapsed();
    lab.loss(1, 0);
    folder.wait_identical();
    eprintln!(
        "30 % loss: 500 small files after {:?}, all with {} MiB after {took:?}",
        small_at.unwrap(),
        BIG >> 20
    );
    // Failing dials and closing connections cost no more than the work: each daemon used well
    // under a quarter of a core (a few seconds of CPU in all is usual). A static peer's redial
    // that failed while the peer had dialled us made the receiver spin a core in its net
    // actor until the connection closed (`PeerBook::next_static_due`).
    let wall = born.elapsed();
    for node in &mesh.nodes {
        let cpu = node.cpu_time().expect("the daemon's CPU time");
        assert!(
            cpu < wall / 4,
            "{cpu:?} of CPU in {wall:?}: a daemon busy for nothing"
        );
    }
    // Sessions fail every few seconds on such a link; each node warns about its one member
    // and share at most once a minute (before: a line per failure, 10-30 in 5-9 minutes).
    let minutes = born.elapsed().as_secs() / 60 + 1;
    for node in &mesh.nodes {
        let warned = node
            .log()
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains("sync session failed"))
            .count();
        assert!(
            warned as u64 <= minutes,
            "{warned} warnings about failed sessions in {minutes} minutes"
        );
    }
}
