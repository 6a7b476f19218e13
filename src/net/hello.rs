//! The hello exchange's decisions, pure and unit-tested: whether a peer's hello is acceptable
//! ([`checked_agent`]) and what to do when our hello to a peer fails ([`HelloRetries`]).

use std::collections::HashMap;

use libp2p::PeerId;

use super::protocol::{self, Hello, PROTOCOL_VERSION};

/// Hellos said again to a still-connected peer whose hello failed, before disconnecting it.
pub const MAX_HELLO_RETRIES: u32 = 3;

/// What to do after one of our hellos to a peer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloRetry {
    /// The peer is gone; a later connection says hello itself.
    Forget,
    /// Say hello again.
    Again,
    /// It failed [`MAX_HELLO_RETRIES`] retries in a row: disconnect it.
    GiveUp,
}

/// Hellos said again to each peer since its last answer.
#[derive(Debug, Default)]
pub struct HelloRetries {
    tries: HashMap<PeerId, u32>,
}

impl HelloRetries {
    /// Counts a failed hello to `peer` and says what to do next.
    pub fn failed(&mut self, peer: PeerId, still_connected: bool) -> HelloRetry {
        if !still_connected {
            self.tries.remove(&peer);
            return HelloRetry::Forget;
        }
        let tries = self.tries.entry(peer).or_insert(0);
        *tries += 1;
        if *tries > MAX_HELLO_RETRIES {
            self.tries.remove(&peer);
            return HelloRetry::GiveUp;
        }
        HelloRetry::Again
    }

    /// Forgets the count of `peer`: it answered, or its last connection closed.
    pub fn forget(&mut self, peer: &PeerId) {
        self.tries.remove(peer);
    }
}

/// The device name of a peer's hello: control characters dropped, cut to
/// [`protocol::MAX_NAME_CHARS`]; `None` if nothing is left.
pub fn checked_name(hello: &Hello) -> Option<String> {
    let name: String = hello
        .name
        .as_deref()?
        .chars()
        .filter(|c| !c.is_control())
        .take(protocol::MAX_NAME_CHARS)
        .collect();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The agent of a peer's hello, cut to [`protocol::MAX_AGENT_CHARS`]; `Err` with it when the
/// peer speaks another protocol version than [`PROTOCOL_VERSION`].
pub fn checked_agent(hello: &Hello) -> Result<String, String> {
    let agent: String = hello
        .agent
        .chars()
        .take(protocol::MAX_AGENT_CHARS)
        .collect();
    if hello.protocol_version == PROTOCOL_VERSION {
        Ok(agent)
    } else {
        Err(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_is_retried_then_given_up() {
        let peer = PeerId::random();
        let mut retries = HelloRetries::default();
        for _ in 0..MAX_HELLO_RETRIES {
            assert_eq!(retries.failed(peer, true), HelloRetry::Again);
        }
        assert_eq!(retries.failed(peer, true), HelloRetry::GiveUp);
        // Giving up starts the count afresh for a later connection.
        assert_eq!(retries.failed(peer, true), HelloRetry::Again);
    }

    #[test]
    fn an_answer_or_a_disconnect_resets_the_count() {
        let peer = PeerId::random();
        let mut retries = HelloRetries::default();
        for _ in 0..MAX_HELLO_RETRIES {
            retries.failed(peer, true);
        }
        retries.forget(&peer);
        assert_eq!(retries.failed(peer, true), HelloRetry::Again);
        for _ in 0..MAX_HELLO_RETRIES {
            retries.failed(peer, true);
        }
        assert_eq!(retries.failed(peer, false), HelloRetry::Forget);
        assert_eq!(retries.failed(peer, true), HelloRetry::Again);
    }

    #[test]
    fn hello_of_another_version_is_refused_and_agents_are_cut() {
        let long = "x".repeat(protocol::MAX_AGENT_CHARS + 10);
        let ours = Hello {
            protocol_version: PROTOCOL_VERSION,
            agent: long.clone(),
            wall_ms: None,
            name: Some(format!(" lap\u{7}top{long} ")),
            chunk_parts: true,
        };
        let name = checked_name(&ours).unwrap();
        assert!(name.starts_with("laptopxxx"), "{name}");
        assert_eq!(
            name.chars().count(),
            protocol::MAX_NAME_CHARS - 1,
            "cut, then trimmed"
        );
        assert_eq!(
            checked_name(&Hello {
                name: Some(" \n".into()),
                ..ours.clone()
            }),
            None
        );
        assert_eq!(
            checked_agent(&ours).unwrap().chars().count(),
            protocol::MAX_AGENT_CHARS
        );
        let other = Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            agent: "meshsync/9".into(),
            wall_ms: None,
            name: None,
            chunk_parts: false,
        };
        assert_eq!(checked_agent(&other), Err("meshsync/9".into()));
    }
}
