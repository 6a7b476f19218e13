//! Hostile and foreign peers, black box: memory bounded in total whatever the number of
//! identities, no redial storm against peers that do not speak meshsync, quiet logs under a
//! stream flood.

mod support;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, kad, ping};
use meshsync::net::protocol::{self, Hello, PROTOCOL, Response, varint};
use support::raw::test_swarm;
use support::{Api, Node, WAIT, wait_until};

/// Longer than any of these tests: connections and requests of the test's peers never time out.
const LONG: Duration = Duration::from_secs(600);

/// A codec that writes a request's bytes and then holds the stream open without finishing it:
/// a frame that never completes. It answers the daemon's hello, as a member would, so that it
/// is not dropped as a stranger before it can do harm.
#[derive(Debug, Clone, Default)]
struct StallingCodec {
    /// Requests finished writing, or failed to (the daemon reset the stream).
    settled: Arc<AtomicUsize>,
}

impl request_response::Codec for StallingCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        // The daemon's hello, the one request it answers.
        let _: ciborium::Value = protocol::read_frame(io, 1 << 20).await?;
        Ok(Vec::new())
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        futures::future::pending().await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let written = async {
            io.write_all(&req).await?;
            io.flush().await
        }
        .await;
        self.settled.fetch_add(1, Ordering::SeqCst);
        written?;
        // Never returns: `request_response` would close our side, ending the frame early.
        futures::future::pending().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        protocol::write_frame(io, &Response::Hello(Hello::ours(None)), 1 << 20).await
    }
}

type StallingSwarm = libp2p::Swarm<request_response::Behaviour<StallingCodec>>;

/// A fresh identity connected to `target`, able to hold `streams` unfinished requests.
async fn stalling_peer(
    target: &Multiaddr,
    streams: usize,
    settled: Arc<AtomicUsize>,
) -> (StallingSwarm, PeerId) {
    let mut swarm = test_swarm(LONG, |_| {
        request_response::Behaviour::with_codec(
            StallingCodec { settled },
            [(PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(LONG)
                // Room for the daemon's hello besides our own streams.
                .with_max_concurrent_streams(streams + 8),
        )
    });
    swarm.dial(target.clone()).unwrap();
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => return (swarm, peer_id),
            SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
            _ => {}
        }
    }
}

async fn swarm_event(
    swarm: &mut StallingSwarm,
) -> SwarmEvent<request_response::Event<Vec<u8>, Vec<u8>>> {
    swarm.select_next_some().await
}

/// Answers the daemon's hello, the only request it sends a stranger.
fn answer_hellos(
    swarm: &mut StallingSwarm,
    event: SwarmEvent<request_response::Event<Vec<u8>, Vec<u8>>>,
) {
    if let SwarmEvent::Behaviour(request_response::Event::Message {
        message: request_response::Message::Request { channel, .. },
        ..
    }) = event
    {
        let _ = swarm.behaviour_mut().send_response(channel, Vec::new());
    }
}

/// The daemon's resident memory now (VmRSS), from `/proc`.
fn rss(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid().unwrap())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The README's worst case with the default limits stays under this.
const ATTACK_RSS_BOUND: u64 = 256 * 1024 * 1024;

/// Twenty identities from one host each open 64 streams and send the first 1 MiB of a 2 MiB
/// frame, then stall. Before the budget each stream kept its bytes for 30 s: over 1 GiB. Now all of them together hold at most the total budget; a new honest daemon still
/// connects and syncs a records share; and the memory comes back after the attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_identities_with_half_sent_frames_stay_within_the_total_budget() {
    const IDENTITIES: usize = 20;
    const STREAMS: usize = 64;
    const SENT: usize = 1024 * 1024;
    let mut a = tokio::task::spawn_blocking(|| Node::init(&[]))
        .await
        .unwrap();
    a.start();
    let target: Multiaddr = a.listen_addr().parse().unwrap();
    let idle = rss(&a);
    let mut frame = varint(2 * 1024 * 1024);
    frame.extend(vec![0x5a; SENT]);
    let mut attackers = Vec::new();
    let settled = Arc::new(AtomicUsize::new(0));
    for _ in 0..IDENTITIES {
        let (mut swarm, daemon) = stalling_peer(&target, STREAMS, settled.clone()).await;
        for _ in 0..STREAMS {
            swarm.behaviour_mut().send_request(&daemon, frame.clone());
        }
        attackers.push(tokio::spawn(async move {
            loop {
                let event = swarm_event(&mut swarm).await;
                answer_hellos(&mut swarm, event);
            }
        }));
    }
    // Every stream's bytes are with the daemon, or the daemon refused them.
    tokio::time::timeout(WAIT, async {
        while settled.load(Ordering::SeqCst) < IDENTITIES * STREAMS {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every attacking stream to be written or refused");
    // Written is not yet read: the daemon has taken in what it will once its memory stops
    // growing.
    let mut under_attack = rss(&a);
    let deadline = Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss(&a);
        if now <= under_attack + (1 << 20) || Instant::now() > deadline {
            under_attack = under_attack.max(now);
            break;
        }
        under_attack = now;
    }
    let guards = tokio::task::block_in_place(|| a.status()["guards"].clone());
    assert!(
        guards["inbound_buffered_bytes"].as_u64().unwrap()
            <= guards["inbound_buffer_limit"].as_u64().unwrap(),
        "{guards}"
    );
    assert!(
        guards["inbound_evictions"].as_u64().unwrap() > 0,
        "20 peers over their share of 8 MiB each need more than the total: {guards}"
    );

    // A new honest daemon joins a records share of the attacked one and gets its records.
    let (a, b, during) = tokio::task::spawn_blocking(move || {
        let token = a.create_records_share("data");
        let api = Api::of(&a);
        for i in 0..50 {
            api.put("data", &format!("k{i:02}"), "v");
        }
        let mut b = Node::init(&["--peer", &a.listen_addr()]);
        b.start();
        b.join_records_share(&token, "data");
        wait_until("the honest daemon to get every record", WAIT, || {
            b.kv_list_json("data")
                .as_array()
                .is_some_and(|l| l.len() == 50)
        });
        let during = rss(&a);
        (a, b, during)
    })
    .await
    .unwrap();
    let peak = a.peak_rss().unwrap();
    for attacker in &attackers {
        attacker.abort();
    }
    drop(attackers);
    let after = tokio::task::spawn_blocking(move || {
        let mut after = rss(&a);
        let deadline = Instant::now() + WAIT;
        while after > idle + 32 * 1024 * 1024 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            after = rss(&a);
        }
        drop(b);
        after
    })
    .await
    .unwrap();
    eprintln!(
        "RSS idle {} MiB, under attack {} MiB, while syncing {} MiB, peak {} MiB, after {} MiB",
        idle >> 20,
        under_attack >> 20,
        during >> 20,
        peak >> 20,
        after >> 20
    );
    assert!(
        peak < ATTACK_RSS_BOUND,
        "peak RSS {} MiB over the {} MiB bound",
        peak >> 20,
        ATTACK_RSS_BOUND >> 20
    );
    assert!(
        after <= idle + 32 * 1024 * 1024,
        "RSS {} MiB after the attack, idle was {} MiB",
        after >> 20,
        idle >> 20
    );
}

/// Kademlia on `protocol` in `mode`, with a memory store.
fn kademlia(
    key: &libp2p::identity::Keypair,
    protocol: StreamProtocol,
    mode: kad::Mode,
) -> kad::Behaviour<kad::store::MemoryStore> {
    let id = key.public().to_peer_id();
    let mut kad = kad::Behaviour::with_config(
        id,
        kad::store::MemoryStore::new(id),
        kad::Config::new(protocol),
    );
    kad.set_mode(Some(mode));
    kad
}

/// What a plain libp2p node runs: identify, ping, and the public DHT's Kademlia protocol.
#[derive(NetworkBehaviour)]
struct Plain {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

/// A plain libp2p node connects and stays up: the daemon drops it, does not dial it back more
/// than a handful of times, and never hands it out to a meshsync peer that asks for the
/// closest peers to its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_libp2p_peer_is_not_redialled_nor_handed_out() {
    const WATCH: Duration = Duration::from_secs(30);
    let mut a = tokio::task::spawn_blocking(|| Node::init(&[]))
        .await
        .unwrap();
    a.start();
    let target: Multiaddr = a.listen_addr().parse().unwrap();
    let mut plain = test_swarm(LONG, |key| Plain {
        identify: identify::Behaviour::new(identify::Config::new(
            "/ipfs/id/1.0.0".into(),
            key.public(),
        )),
        ping: ping::Behaviour::default(),
        kad: kademlia(
            key,
            StreamProtocol::new("/ipfs/kad/1.0.0"),
            kad::Mode::Server,
        ),
    });
    plain
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    plain.dial(target.clone()).unwrap();
    let plain_id = *plain.local_peer_id();
    let (mut inbound, mut outbound, mut first) = (0, 0, None);
    let deadline = tokio::time::Instant::now() + WATCH;
    loop {
        let event = tokio::select! {
            event = plain.select_next_some() => event,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        if let SwarmEvent::ConnectionEstablished { endpoint, .. } = event {
            first.get_or_insert(Instant::now());
            if endpoint.is_dialer() {
                outbound += 1;
            } else {
                inbound += 1;
            }
        }
    }
    assert_eq!(outbound, 1, "the plain node dialled once");
    let guards = tokio::task::block_in_place(|| a.status()["guards"].clone());
    assert_eq!(guards["peers_left_alone"], 1, "{guards}");
    assert!(first.is_some());
    assert!(
        inbound <= 3,
        "the daemon dialled the plain node {inbound} times in {WATCH:?}"
    );

    // A meshsync DHT client asks the daemon for the peers closest to the plain node's id.
    let mut client = test_swarm(LONG, |key| {
        kademlia(key, meshsync::net::swarm::KAD_PROTOCOL, kad::Mode::Client)
    });
    client
        .behaviour_mut()
        .add_address(&a.peer_id.parse().unwrap(), target);
    client.behaviour_mut().get_closest_peers(plain_id);
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            }) = client.select_next_some().await
            {
                let peers: Vec<PeerId> = match result {
                    Ok(ok) => ok.peers.into_iter().map(|p| p.peer_id).collect(),
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                        peers.into_iter().map(|p| p.peer_id).collect()
                    }
                };
                if step.last {
                    return peers;
                }
            }
        }
    })
    .await
    .expect("the lookup ends");
    assert!(
        !found.contains(&plain_id),
        "the daemon handed out the plain node: {found:?}"
    );
    drop(a);
}

/// One identity opens streams as fast as it can for 10 s, reconnecting whenever it is cut
/// off: the daemon's log grows by a few lines, and an honest member keeps syncing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_costs_a_few_log_lines() {
    const FLOOD: Duration = Duration::from_secs(10);
    let (a, b) = tokio::task::spawn_blocking(|| {
        let mut a = Node::init(&[]);
        a.start_with_default_log();
        let mut b = Node::init(&["--peer", &a.listen_addr()]);
        b.start();
        let token = a.create_records_share("data");
        b.join_records_share(&token, "data");
        (a, b)
    })
    .await
    .unwrap();
    let target: Multiaddr = a.listen_addr().parse().unwrap();
    let lines_before = a.log().lines().count();
    let flood = tokio::spawn(async move {
        let end = tokio::time::Instant::now() + FLOOD;
        let mut opened = 0usize;
        while tokio::time::Instant::now() < end {
            let (mut swarm, daemon) = stalling_peer(&target, 10_000, Arc::default()).await;
            for _ in 0..1000 {
                swarm.behaviour_mut().send_request(&daemon, vec![1]);
                opened += 1;
            }
            loop {
                let event = tokio::select! {
                    event = swarm_event(&mut swarm) => event,
                    _ = tokio::time::sleep_until(end) => break,
                };
                if let SwarmEvent::ConnectionClosed { .. } = event {
                    break;
                }
                answer_hellos(&mut swarm, event);
            }
        }
        opened
    });
    let (a, b) = tokio::task::spawn_blocking(move || {
        let api = Api::of(&a);
        let mut i = 0;
        let start = Instant::now();
        while start.elapsed() < FLOOD {
            api.put("data", &format!("k{i:03}"), "v");
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        let expected = i;
        wait_until(
            "B to get every record written during the flood",
            WAIT,
            || {
                b.kv_list_json("data")
                    .as_array()
                    .is_some_and(|l| l.len() == expected)
            },
        );
        (a, b)
    })
    .await
    .unwrap();
    let opened = flood.await.unwrap();
    let log = a.log();
    let grown: Vec<&str> = log.lines().skip(lines_before).collect();
    eprintln!("{opened} streams asked for; {} new log lines", grown.len());
    assert!(opened >= 1000);
    // Each identity the flooder makes up answers hello, so it is "connected" at info: 4 such
    // lines a minute per address each way (`CONNECTION_LINES_PER_ADDRESS`), and a few others.
    assert!(
        grown.len() <= 12,
        "the log grew by {} lines:\n{}",
        grown.len(),
        grown.join("\n")
    );
    drop(b);
}
