//! What each connected peer's protocol offers beyond the version both speak, from its hello:
//! the network task notes it, the rest of the daemon reads it before asking for something an
//! older peer could not decode (an undecodable request costs a failed request and a warning on
//! the peer's side).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

use super::protocol::Hello;

/// Peers whose hello offered [`Request::GetChunkPart`](super::protocol::Request::GetChunkPart);
/// cheap to clone. Holds connected peers only (bounded by the connection limits).
#[derive(Debug, Clone, Default)]
pub struct Features {
    chunk_parts: Arc<Mutex<HashSet<PeerId>>>,
}

impl Features {
    /// Notes what `peer`'s latest hello offers.
    pub fn note(&self, peer: PeerId, hello: &Hello) {
        let mut parts = self.chunk_parts.lock().unwrap_or_else(|e| e.into_inner());
        if hello.chunk_parts {
            parts.insert(peer);
        } else {
            parts.remove(&peer);
        }
    }

    /// Forgets `peer` (its last connection closed).
    pub fn forget(&self, peer: &PeerId) {
        let mut parts = self.chunk_parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.remove(peer);
    }

    /// Whether `peer` answers requests for parts of chunks.
    pub fn chunk_parts(&self, peer: &PeerId) -> bool {
        let parts = self.chunk_parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.contains(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_offers_parts_while_its_hello_says_so_and_it_is_connected() {
        let (features, peer) = (Features::default(), PeerId::random());
        let mut hello = Hello::ours(None);
        assert!(!features.chunk_parts(&peer), "nothing known before a hello");
        features.note(peer, &hello);
        assert!(features.chunk_parts(&peer));
        hello.chunk_parts = false;
        features.note(peer, &hello);
        assert!(!features.chunk_parts(&peer), "an older peer's hello");
        hello.chunk_parts = true;
        features.note(peer, &hello);
        features.forget(&peer);
        assert!(!features.chunk_parts(&peer), "gone");
    }

    /// The hello of a release before parts, as it decodes hellos.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct OlderHello {
        protocol_version: u32,
        agent: String,
        #[serde(default)]
        wall_ms: Option<u64>,
        #[serde(default)]
        name: Option<String>,
    }

    #[test]
    fn older_peers_read_our_hello_and_theirs_offers_no_parts() {
        let mut ours = Vec::new();
        ciborium::into_writer(&Hello::ours(Some("laptop".into())), &mut ours).unwrap();
        let read: OlderHello = ciborium::from_reader(&ours[..]).expect("an older peer reads it");
        assert_eq!(read.name.as_deref(), Some("laptop"));
        let older = OlderHello {
            protocol_version: super::super::protocol::PROTOCOL_VERSION,
            agent: "meshsync/0.1.0".into(),
            wall_ms: Some(1),
            name: None,
        };
        let mut theirs = Vec::new();
        ciborium::into_writer(&older, &mut theirs).unwrap();
        let hello: Hello = ciborium::from_reader(&theirs[..]).unwrap();
        assert!(!hello.chunk_parts);
        let (features, peer) = (Features::default(), PeerId::random());
        features.note(peer, &hello);
        assert!(!features.chunk_parts(&peer));
    }
}
