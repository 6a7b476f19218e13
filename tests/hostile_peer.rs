//! A peer that speaks garbage on the meshsync protocol cannot crash or wedge a daemon.
//!
//! The misbehaving peer ([`support::raw`]) sends frames no honest peer would: random bytes,
//! lengths beyond the limit, truncated frames, garbage answers to the daemon's own hello, and,
//! as a member, entries it may not write.

mod support;

use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use meshsync::net::protocol::{self, Hello, Request, Response};
use support::Node;
use support::raw::{
    ask, decode_framed, frame, prove_membership, raw_peer, register_by, try_decode_framed,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_protocol_does_not_hurt_the_daemon() {
    let mut node = Node::init(&[]);
    node.start();
    let target: Multiaddr = node.listen_addr().parse().unwrap();

    let (mut swarm, daemon) = raw_peer(target).await;

    let valid_hello = frame(&protocol::encode(&Request::Hello(Hello::ours(None))).unwrap());
    let mut truncated = valid_hello.clone();
    truncated.truncate(valid_hello.len() - 2);
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x11],
        frame(&[0xff; 64]),
        frame(b"not cbor at all"),
        vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        protocol::varint(u32::MAX as usize),
        protocol::varint(protocol::MAX_REQUEST_BYTES + 1),
        truncated,
        frame(&protocol::encode(&"a string, not a request").unwrap()),
        vec![],
    ];
    let mut pending = std::collections::HashMap::new();
    for (i, bytes) in garbage.iter().enumerate() {
        pending.insert(
            swarm.behaviour_mut().send_request(&daemon, bytes.clone()),
            i,
        );
    }
    let hello_request = swarm.behaviour_mut().send_request(&daemon, valid_hello);

    let mut hello_answer = None;
    let deadline = tokio::time::sleep(support::WAIT);
    tokio::pin!(deadline);
    while hello_answer.is_none() || !pending.is_empty() {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            _ = &mut deadline => panic!("timed out; still pending: {pending:?}"),
        };
        match event {
            SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                match message {
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if request_id == hello_request {
                            hello_answer = Some(response);
                        } else {
                            let i = pending.remove(&request_id).unwrap();
                            // A refusal is fine; a real answer to garbage is not.
                            assert!(
                                try_decode_framed(&response).is_none(),
                                "garbage #{i} got a real answer"
                            );
                        }
                    }
                    // The daemon says hello to us: answer with garbage too.
                    request_response::Message::Request { channel, .. } => {
                        let _ = swarm.behaviour_mut().send_response(channel, vec![0xff; 32]);
                    }
                }
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                eprintln!("request {request_id} failed: {error}");
                assert_ne!(
                    request_id, hello_request,
                    "the valid hello must be answered"
                );
                pending.remove(&request_id);
            }
            _ => {}
        }
    }
    let answer = hello_answer.unwrap();
    let decoded: Response = decode_framed(&answer);
    assert!(
        matches!(decoded, Response::Hello(h) if h.protocol_version == protocol::PROTOCOL_VERSION)
    );

    assert!(node.is_running(), "daemon survived:\n{}", node.log());
    let status = node.status();
    assert_eq!(status["peer_id"], node.peer_id.as_str());
    assert!(!node.log().contains("panicked"), "{}", node.log());
    assert!(node.stop(), "clean exit after the abuse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_member_cannot_push_entries() {
    let mut node = support::node_with_records("data", 5, "from the writer");
    let api = support::Api::of(&node);
    let out = node.cli(&["share", "token", "data", "--read-only"]);
    assert!(out.status.success());
    let token = meshsync::share::Token::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert!(
        token.write.is_none(),
        "a read-only token carries no write key"
    );
    let (mut swarm, daemon) = raw_peer(node.listen_addr().parse().unwrap()).await;
    let me = *swarm.local_peer_id();

    // It is a member, and it signs as a writer with a key of its own making: that proves nothing.
    let forged = meshsync::share::new_write_key();
    let answer = prove_membership(&mut swarm, daemon, &token, Some(forged)).await;
    assert!(matches!(answer, Response::Auth(Some(_))), "{answer:?}");
    let share = serde_bytes::ByteArray::new(*token.id);

    // It receives everything.
    let ids = (0..5)
        .map(|i| {
            serde_bytes::ByteArray::new(meshsync::store::record_id(format!("key{i}").as_bytes()))
        })
        .collect();
    let answer = ask(&mut swarm, daemon, &Request::GetEntries { share, ids }).await;
    let Response::Entries(entries) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(entries.len(), 5);

    // Its edits, new keys and overwrites alike, are refused.
    let mut overwrite = entries[0].register.clone();
    overwrite
        .write_local(
            &meshsync::merge::PeerKey::new(me.to_bytes()).unwrap(),
            {
                let hlc = overwrite.winner().unwrap().hlc();
                meshsync::merge::Hlc::new(hlc.millis, hlc.logical + 1)
            },
            meshsync::merge::Payload::Value(serde_bytes::ByteBuf::from(b"defaced".to_vec())),
        )
        .unwrap();
    let pushed = vec![
        protocol::WireEntry {
            key: entries[0].key.clone(),
            register: overwrite,
        },
        protocol::WireEntry {
            key: serde_bytes::ByteBuf::from(b"planted".to_vec()),
            register: register_by(&me, b"planted by a reader"),
        },
    ];
    let answer = ask(
        &mut swarm,
        daemon,
        &Request::Announce {
            share,
            root: serde_bytes::ByteArray::new([0; 32]),
            count: 6,
            entries: pushed,
        },
    )
    .await;
    assert_eq!(
        answer,
        Response::Error("read-only members cannot write".into())
    );
    let list = api.list("data");
    assert_eq!(list.as_array().unwrap().len(), 5, "{list}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|r| r["value"] == "from the writer"),
        "{list}"
    );
    let status = node.status();
    assert_eq!(status["shares"][0]["refused_entries"], 2, "{status}");
    assert!(
        status["shares"][0]["writers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(status["shares"][0]["members"][0], me.to_string());
    assert!(node.log().contains("may not write"));
    assert!(node.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_knowing_the_share_id_gets_nothing() {
    let mut node = support::node_with_records("private", 10, "secret value");
    let api = support::Api::of(&node);
    let status = node.status();
    // Suppose the share id leaked (it is not secret, the secret is): it still opens nothing.
    let share_id: [u8; 32] = hex::decode(status["shares"][0]["id"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let share = serde_bytes::ByteArray::new(share_id);
    let (mut swarm, daemon) = raw_peer(node.listen_addr().parse().unwrap()).await;

    // A made-up membership tag proves nothing, and the answer does not reveal whether any share
    // exists.
    let auth = ask(
        &mut swarm,
        daemon,
        &Request::Auth {
            nonce: serde_bytes::ByteArray::new([7; 32]),
            tag: serde_bytes::ByteArray::new([9; 32]),
            writer: None,
        },
    )
    .await;
    assert_eq!(auth, Response::Auth(None));

    let (_, hello) =
        meshsync::reconcile::Initiator::start(&meshsync::reconcile::Summary::new(), [1; 16]);
    let ids = (0..10)
        .map(|i| {
            serde_bytes::ByteArray::new(meshsync::store::record_id(format!("key{i}").as_bytes()))
        })
        .collect();
    let requests = [
        Request::Reconcile {
            share,
            message: hello.encode().unwrap().into(),
        },
        Request::GetEntries { share, ids },
        Request::Announce {
            share,
            root: serde_bytes::ByteArray::new([0; 32]),
            count: 0,
            entries: vec![],
        },
    ];
    for request in &requests {
        let answer = ask(&mut swarm, daemon, request).await;
        assert_eq!(
            answer,
            Response::Error("not a member".into()),
            "{request:?}"
        );
    }
    // Asking about a share that does not exist gets the very same answer.
    let answer = ask(
        &mut swarm,
        daemon,
        &Request::GetEntries {
            share: serde_bytes::ByteArray::new([0xab; 32]),
            ids: vec![],
        },
    )
    .await;
    assert_eq!(answer, Response::Error("not a member".into()));

    let after = node.status();
    assert_eq!(
        after["shares"][0]["bytes_sent"], 0,
        "no byte of the share left: {after}"
    );
    assert!(after["shares"][0]["members"].as_array().unwrap().is_empty());
    assert_eq!(api.list("private").as_array().unwrap().len(), 10);
    assert!(node.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_announcing_escaping_paths_gets_them_refused() {
    let mut node = Node::init(&[]);
    node.start();
    let folder = node.home.parent().unwrap().join("folder");
    let out = node.cli(&["share", "create", "--folder", folder.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = meshsync::share::Token::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let (mut swarm, daemon) = raw_peer(node.listen_addr().parse().unwrap()).await;

    // A malicious *member*: it holds a read-write token and proves it.
    let me = *swarm.local_peer_id();
    let answer = prove_membership(&mut swarm, daemon, &token, token.write.map(|k| *k)).await;
    assert!(matches!(answer, Response::Auth(Some(_))), "{answer:?}");

    let file = |content: &[u8]| {
        let meta = meshsync::folder::model::FileMeta {
            kind: meshsync::folder::model::EntryKind::File,
            mode: 0o644,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 0,
            size: content.len() as u64,
            hash: *blake3::hash(content).as_bytes(),
            content: meshsync::folder::model::Content::Inline(vec![
                meshsync::folder::model::ChunkRef {
                    hash: *blake3::hash(content).as_bytes(),
                    len: content.len() as u32,
                },
            ]),
            target: None,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&meta, &mut bytes).unwrap();
        register_by(&me, &bytes)
    };
    let outside = node.home.parent().unwrap().join("escaped");
    let hostile = [
        "../escaped",
        "/tmp/absolute-escape",
        "a/../../escaped",
        ".meshsync/state",
        "x\\..\\escaped",
    ];
    let entries = hostile
        .iter()
        .map(|path| protocol::WireEntry {
            key: serde_bytes::ByteBuf::from(path.as_bytes().to_vec()),
            register: file(b"pwned"),
        })
        .collect();
    let share = serde_bytes::ByteArray::new(*token.id);
    let answer = ask(
        &mut swarm,
        daemon,
        &Request::Announce {
            share,
            root: serde_bytes::ByteArray::new([0; 32]),
            count: 5,
            entries,
        },
    )
    .await;
    assert_eq!(
        answer,
        Response::Ack,
        "the message is fine, its entries are refused"
    );
    // The store refuses each entry before the answer is sent, and says so once for the peer
    // (the rest are counted in its next line, a minute later); nothing refused there reaches
    // the folder.
    tokio::task::block_in_place(|| {
        node.wait_for_log(
            "the hostile entries to be refused",
            &["refused an entry"],
            0,
        )
    });
    assert!(!outside.exists(), "nothing written outside the folder");
    assert!(!std::path::Path::new("/tmp/absolute-escape").exists());
    let status = node.status();
    assert_eq!(
        status["shares"][0]["entries"], 0,
        "no hostile entry was stored: {status}"
    );
    assert!(
        node.log().contains("refused"),
        "the refusal is reported in the log"
    );
    assert!(node.is_running());
    assert!(node.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_open_many_connections() {
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    let mut node = Node::init(&[]);
    node.start();
    let addr: Multiaddr = node.listen_addr().parse().unwrap();
    let (mut swarm, daemon) = raw_peer(addr.clone()).await;
    let mut dials = std::collections::HashSet::new();
    for _ in 0..4 {
        let opts = DialOpts::peer_id(daemon)
            .addresses(vec![addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        dials.insert(opts.connection_id());
        swarm.dial(opts).unwrap();
    }
    // Five dials (one plus four), at most two connections: the documented per-peer limit.
    assert_eq!(meshsync::net::MAX_CONNECTIONS_PER_PEER, 2);
    // Drive the swarm until the daemon has refused the dials over the limit: one more
    // connection fits beside the first, so at least three of the four extra ones end.
    let mut ended = std::collections::HashSet::new();
    let deadline = tokio::time::sleep(support::WAIT);
    tokio::pin!(deadline);
    while ended.len() < 3 {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            _ = &mut deadline => panic!(
                "timed out: only {} of the 4 extra connections ended",
                ended.len()
            ),
        };
        match event {
            SwarmEvent::ConnectionClosed { connection_id, .. }
            | SwarmEvent::OutgoingConnectionError { connection_id, .. }
                if dials.contains(&connection_id) =>
            {
                ended.insert(connection_id);
            }
            _ => {}
        }
    }
    // The daemon logs each connection it denies; here, those over the limit.
    tokio::task::block_in_place(|| {
        node.wait_for_log(
            "the daemon to deny a connection over the limit",
            &["Denied"],
            0,
        )
    });
    let open = swarm.network_info().connection_counters().num_established();
    assert!(open <= 2, "{open} connections stayed open from one peer");
    assert!(node.is_running());
    assert!(node.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowing_a_chunk_hash_opens_nothing() {
    let mut node = Node::init(&[]);
    node.start();
    let folder = node.home.parent().unwrap().join("folder");
    let out = node.cli(&["share", "create", "--folder", folder.to_str().unwrap()]);
    assert!(out.status.success());
    let content = b"classified chunk";
    std::fs::write(folder.join("secret.txt"), content).unwrap();
    let hash = *blake3::hash(content).as_bytes();
    support::wait_until("the file to be indexed", support::WAIT, || {
        node.status()["shares"][0]["entries"] == 1
    });
    let status = node.status();
    let folder_id: [u8; 32] = hex::decode(status["shares"][0]["id"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    // The asker is a member of another share on the same daemon, and knows the folder's id and
    // the chunk's hash.
    let other = node.create_records_share("other");
    let other = meshsync::share::Token::parse(&other).unwrap();
    let (mut swarm, daemon) = raw_peer(node.listen_addr().parse().unwrap()).await;
    let answer = prove_membership(&mut swarm, daemon, &other, other.write.map(|k| *k)).await;
    assert!(matches!(answer, Response::Auth(Some(_))), "{answer:?}");
    for share in [folder_id, *other.id] {
        let share = serde_bytes::ByteArray::new(share);
        let hash = serde_bytes::ByteArray::new(hash);
        for request in [
            Request::GetChunk { share, hash },
            Request::GetChunks {
                share,
                hashes: vec![hash],
            },
            Request::GetPage { share, hash },
        ] {
            let answer = ask(&mut swarm, daemon, &request).await;
            assert_eq!(
                answer,
                Response::Error("not a member".into()),
                "{request:?}"
            );
        }
    }
    let status = node.status();
    let folder_status = status["shares"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "folder")
        .unwrap();
    assert_eq!(folder_status["bytes_sent"], 0, "{status}");
    assert_eq!(folder_status["folder"]["served_bytes"], 0, "{status}");
    assert!(node.stop());
}
