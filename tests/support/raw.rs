//! A misbehaving peer for tests: an in-process libp2p node with a codec that writes raw bytes,
//! so it can send frames no honest peer would, and helpers to make it a (malicious) member.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};
use meshsync::net::protocol::{self, Hello, PROTOCOL, Request, Response};

/// The raw peer's swarm.
pub type RawSwarm = libp2p::Swarm<request_response::Behaviour<RawCodec>>;

/// Reads at most this much of an answer; the daemon's answers are small.
pub const MAX_RAW_READ: u64 = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(MAX_RAW_READ).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(MAX_RAW_READ).read_to_end(&mut buf).await?;
        Ok(buf)
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
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await?;
        io.close().await
    }
}

/// Decodes one framed answer (varint length, then CBOR), if it is one.
pub fn try_decode_framed(bytes: &[u8]) -> Option<Response> {
    let prefix = bytes.iter().position(|b| b & 0x80 == 0)? + 1;
    protocol::decode(&bytes[prefix..]).ok()
}

pub fn decode_framed(bytes: &[u8]) -> Response {
    try_decode_framed(bytes).expect("a well-formed answer")
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = protocol::varint(payload.len());
    out.extend_from_slice(payload);
    out
}

/// A swarm with a fresh identity on TCP, Noise and Yamux (as the daemon speaks), running
/// `behaviour`; connections stay up for `idle` without streams.
pub fn test_swarm<B: libp2p::swarm::NetworkBehaviour>(
    idle: Duration,
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| behaviour(key))
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build()
}

/// Connects a raw peer to `target` and returns its swarm and the daemon's peer id.
pub async fn raw_peer(target: Multiaddr) -> (RawSwarm, libp2p::PeerId) {
    let mut swarm = test_swarm(Duration::from_secs(60), |_| {
        request_response::Behaviour::with_codec(
            RawCodec,
            [(PROTOCOL, ProtocolSupport::Full)],
            // Longer than the daemon's own request timeout, so that a test can hold a
            // daemon's request unanswered until the daemon gives up on it.
            request_response::Config::default().with_request_timeout(Duration::from_secs(120)),
        )
    });
    swarm.dial(target).unwrap();
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => return (swarm, peer_id),
            SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
            _ => {}
        }
    }
}

/// Sends one well-formed request and returns the decoded answer.
pub async fn ask(swarm: &mut RawSwarm, daemon: libp2p::PeerId, request: &Request) -> Response {
    let id = swarm
        .behaviour_mut()
        .send_request(&daemon, frame(&protocol::encode(request).unwrap()));
    let deadline = tokio::time::sleep(super::WAIT);
    tokio::pin!(deadline);
    loop {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            _ = &mut deadline => panic!("no answer to {request:?}"),
        };
        match event {
            SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                match message {
                    request_response::Message::Response {
                        request_id,
                        response,
                    } if request_id == id => {
                        return decode_framed(&response);
                    }
                    request_response::Message::Request { channel, .. } => {
                        // Answer the daemon's own hello properly, so it talks to us as a peer.
                        let hello =
                            frame(&protocol::encode(&Response::Hello(Hello::ours(None))).unwrap());
                        let _ = swarm.behaviour_mut().send_response(channel, hello);
                    }
                    _ => {}
                }
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) if request_id == id => {
                panic!("request failed: {error}")
            }
            _ => {}
        }
    }
}

/// Proves membership of the token's share, signing as a writer with `write_key` if given.
pub async fn prove_membership(
    swarm: &mut RawSwarm,
    daemon: libp2p::PeerId,
    token: &meshsync::share::Token,
    write_key: Option<[u8; 32]>,
) -> Response {
    use meshsync::share;
    let me = *swarm.local_peer_id();
    let nonce = share::random_bytes();
    let request = Request::Auth {
        nonce: nonce.into(),
        tag: share::auth_tag(&token.secret, &me, &daemon, &nonce).into(),
        writer: write_key
            .map(|key| share::writer_sign(&key, share::Role::Asker, &me, &daemon, &nonce).into()),
    };
    let answer = ask(swarm, daemon, &request).await;
    if let Response::Auth(Some(proof)) = &answer {
        assert!(share::macs_equal(
            &proof.member,
            &share::auth_proof(&token.secret, &me, &daemon, &nonce)
        ));
        let signature = proof.writer.expect("the daemon is a read-write member");
        assert!(
            share::writer_verify(
                &token.writers,
                &signature,
                share::Role::Answerer,
                &me,
                &daemon,
                &nonce
            ),
            "even a read-only member can check that the daemon may write"
        );
    }
    answer
}

/// A record register holding one value written by `author`.
pub fn register_by(author: &libp2p::PeerId, value: &[u8]) -> meshsync::store::RecordRegister {
    let mut register = meshsync::store::RecordRegister::new();
    let key = meshsync::merge::PeerKey::new(author.to_bytes()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    register
        .write_local(
            &key,
            meshsync::merge::Hlc::new(now, 0),
            meshsync::merge::Payload::Value(serde_bytes::ByteBuf::from(value.to_vec())),
        )
        .unwrap();
    register
}

/// A request for [`Driven`]'s task: the framed bytes and where the raw answer goes.
type Outgoing = (
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>,
);

/// A raw peer driven by a background task: it answers the daemon's requests with `answer`
/// (hello is always answered properly; `None` never answers, holding the stream open) and
/// sends what it is given through [`Driven::send`].
pub struct Driven {
    requests: tokio::sync::mpsc::UnboundedSender<Outgoing>,
    /// Set once the daemon closed the last connection to it.
    pub disconnected: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Driven {
    /// Starts driving `swarm`.
    pub fn start(
        mut swarm: RawSwarm,
        mut answer: impl FnMut(Request) -> Option<Response> + Send + 'static,
    ) -> Driven {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
        let disconnected = std::sync::Arc::new(AtomicBool::new(false));
        let flag = disconnected.clone();
        let task = tokio::spawn(async move {
            let mut pending = std::collections::HashMap::new();
            let mut stalled = Vec::new();
            loop {
                tokio::select! {
                    command = rx.recv() => {
                        let Some((bytes, reply)) = command else { return };
                        let Some(daemon) = swarm.connected_peers().next().copied() else {
                            let _ = reply.send(Err("not connected".into()));
                            continue;
                        };
                        pending.insert(swarm.behaviour_mut().send_request(&daemon, bytes), reply);
                    }
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                            match message {
                                request_response::Message::Request { request, channel, .. } => {
                                    let prefix = request.iter().position(|b| b & 0x80 == 0).map_or(0, |p| p + 1);
                                    let response = match protocol::decode::<Request>(&request[prefix.min(request.len())..]) {
                                        Ok(Request::Hello(_)) => Some(Response::Hello(Hello::ours(None))),
                                        Ok(request) => answer(request),
                                        Err(e) => Some(Response::Error(e.to_string())),
                                    };
                                    match response {
                                        Some(response) => {
                                            let bytes = frame(&protocol::encode(&response).unwrap());
                                            let _ = swarm.behaviour_mut().send_response(channel, bytes);
                                        }
                                        None => stalled.push(channel),
                                    }
                                }
                                request_response::Message::Response { request_id, response } => {
                                    if let Some(reply) = pending.remove(&request_id) {
                                        let _ = reply.send(Ok(response));
                                    }
                                }
                            }
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Err(error.to_string()));
                            }
                        }
                        SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                            flag.store(true, Ordering::SeqCst);
                        }
                        _ => {}
                    },
                }
            }
        });
        Driven {
            requests: tx,
            disconnected,
            task,
        }
    }

    /// Sends a request and waits for the decoded answer (or why there is none).
    pub async fn send(&self, request: &Request) -> Result<Response, String> {
        let bytes = self
            .send_raw(frame(&protocol::encode(request).unwrap()))
            .await?;
        try_decode_framed(&bytes).ok_or_else(|| format!("undecodable answer {bytes:?}"))
    }

    /// Sends raw bytes as a request and waits for the raw answer (or why there is none).
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send((bytes, reply))
            .map_err(|_| "driver stopped".to_string())?;
        rx.await.map_err(|_| "driver stopped".to_string())?
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.task.abort();
    }
}
