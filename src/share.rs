//! Share tokens and the cryptography of membership.
//!
//! A share is identified by a random 32-byte id and guarded by a random 32-byte secret. Holding
//! the secret is membership. The token a user copies between machines carries both, plus the
//! addresses of the peer that made it, so joining works without mDNS or a DHT.
//!
//! Everything derived from the secret uses BLAKE3 in key-derivation mode with a distinct context
//! string, so the auth key, the DHT provider key and the secret itself cannot be linked by anyone
//! who lacks the secret.
//!
//! # Read-only members
//! A share also has an Ed25519 **write key**, independent of the secret. Read-write tokens carry
//! its private half, read-only tokens only its public half. During the exchange that proves
//! membership, a read-write member also signs both peer ids and the nonce with it
//! ([`writer_sign`]); every member, read-only ones included, checks that signature with the
//! public half ([`writer_verify`]) and takes entries only from members that produced one. So
//! what a read-only member edits never reaches anyone, whatever software it runs, and a
//! read-only member cannot pose as a writer to anyone either.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::store::{ShareId, ShareKind};

/// Prefix of every token, with the format version.
pub const TOKEN_PREFIX: &str = "meshsync1-";
/// Longest token accepted (a token with dozens of addresses is still far below).
pub const MAX_TOKEN_CHARS: usize = 8192;
/// Most addresses carried in a token.
pub const MAX_TOKEN_ADDRS: usize = 16;

const AUTH_CONTEXT: &str = "meshsync 2026-11 share membership auth v1";
const PROVIDER_CONTEXT: &str = "meshsync 2026-11 share dht provider key v1";
const WRITER_CONTEXT: &[u8] = b"meshsync 2026-11 share write capability v1";

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a meshsync token.
    #[error("not a meshsync share token (it should start with `{TOKEN_PREFIX}`)")]
    Prefix,
    /// Too long to be a token.
    #[error("share token is too long ({0} characters)")]
    TooLong(usize),
    /// Bad base64 or CBOR.
    #[error("share token is damaged ({0}); copy it again in one piece")]
    Damaged(String),
}

/// What a token carries. Its `Debug` leaves the secrets out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The share id.
    pub id: serde_bytes::ByteArray<32>,
    /// The membership secret.
    pub secret: serde_bytes::ByteArray<32>,
    /// What the share holds.
    pub kind: ShareKind,
    /// Addresses (ending in `/p2p/<id>`) of the peer that made the token.
    pub addrs: Vec<String>,
    /// The public half of the share's write key, with which members check writers.
    pub writers: serde_bytes::ByteArray<32>,
    /// The private half; absent from read-only tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<serde_bytes::ByteArray<32>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("id", &hex::encode(*self.id))
            .field("kind", &self.kind)
            .field("read_only", &self.write.is_none())
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Encodes as one copy-pasteable line.
    pub fn encode(&self) -> String {
        let cbor = crate::cbor::encode(self).expect("a token always encodes");
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(cbor))
    }

    /// Parses a token, tolerating surrounding white space.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::TooLong(text.len()));
        }
        let body = text.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Prefix)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Damaged(e.to_string()))?;
        let token: Token =
            crate::cbor::decode(&bytes).map_err(|e| TokenError::Damaged(e.to_string()))?;
        if token.addrs.len() > MAX_TOKEN_ADDRS {
            return Err(TokenError::Damaged("too many addresses".into()));
        }
        if let Some(write) = &token.write
            && writer_public(write) != *token.writers
        {
            return Err(TokenError::Damaged(
                "its two write keys do not match".into(),
            ));
        }
        Ok(token)
    }

    /// The addresses that parse as multiaddrs with a peer id.
    pub fn dialable_addrs(&self) -> Vec<Multiaddr> {
        self.addrs
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .filter(|a| crate::config::peer_id_of(a).is_some())
            .collect()
    }
}

/// 32 random bytes from the OS.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random generator works");
    bytes
}

/// A new share id and secret.
pub fn new_share() -> (ShareId, [u8; 32]) {
    (random_bytes(), random_bytes())
}

fn mac(
    context: &str,
    secret: &[u8; 32],
    role: &[u8],
    asker: &PeerId,
    answerer: &PeerId,
    nonce: &[u8; 32],
) -> [u8; 32] {
    let key = blake3::derive_key(context, secret);
    let mut hasher = blake3::Hasher::new_keyed(&key);
    for part in [role, &asker.to_bytes(), &answerer.to_bytes()] {
        hasher.update(&(part.len() as u32).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(nonce);
    *hasher.finalize().as_bytes()
}

/// The asker's tag: proves it holds `secret` to `answerer`, for this nonce only.
pub fn auth_tag(
    secret: &[u8; 32],
    asker: &PeerId,
    answerer: &PeerId,
    nonce: &[u8; 32],
) -> [u8; 32] {
    mac(AUTH_CONTEXT, secret, b"initiator", asker, answerer, nonce)
}

/// The answerer's proof that it holds `secret` too.
pub fn auth_proof(
    secret: &[u8; 32],
    asker: &PeerId,
    answerer: &PeerId,
    nonce: &[u8; 32],
) -> [u8; 32] {
    mac(AUTH_CONTEXT, secret, b"responder", asker, answerer, nonce)
}

/// A new private write key.
pub fn new_write_key() -> [u8; 32] {
    random_bytes()
}

/// The public half of a write key.
pub fn writer_public(write_key: &[u8; 32]) -> [u8; 32] {
    let secret = libp2p::identity::ed25519::SecretKey::try_from_bytes(*write_key)
        .expect("any 32 bytes are an Ed25519 secret key");
    libp2p::identity::ed25519::Keypair::from(secret)
        .public()
        .to_bytes()
}

/// Who signs in an auth exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The peer that asked.
    Asker,
    /// The peer that answered.
    Answerer,
}

fn writer_message(role: Role, asker: &PeerId, answerer: &PeerId, nonce: &[u8; 32]) -> Vec<u8> {
    let role: &[u8] = match role {
        Role::Asker => b"initiator",
        Role::Answerer => b"responder",
    };
    let mut message = WRITER_CONTEXT.to_vec();
    for part in [role, &asker.to_bytes(), &answerer.to_bytes(), nonce] {
        message.extend_from_slice(&(part.len() as u32).to_be_bytes());
        message.extend_from_slice(part);
    }
    message
}

/// Signs, as `role` in the exchange between `asker` and `answerer` with `nonce`, that we hold
/// the write key.
pub fn writer_sign(
    write_key: &[u8; 32],
    role: Role,
    asker: &PeerId,
    answerer: &PeerId,
    nonce: &[u8; 32],
) -> [u8; 64] {
    let secret = libp2p::identity::ed25519::SecretKey::try_from_bytes(*write_key)
        .expect("any 32 bytes are an Ed25519 secret key");
    let signature = libp2p::identity::ed25519::Keypair::from(secret)
        .sign(&writer_message(role, asker, answerer, nonce));
    signature
        .try_into()
        .expect("Ed25519 signatures are 64 bytes")
}

/// Checks a [`writer_sign`] signature against the share's public write key.
pub fn writer_verify(
    writers: &[u8; 32],
    signature: &[u8; 64],
    role: Role,
    asker: &PeerId,
    answerer: &PeerId,
    nonce: &[u8; 32],
) -> bool {
    libp2p::identity::ed25519::PublicKey::try_from_bytes(writers)
        .is_ok_and(|public| public.verify(&writer_message(role, asker, answerer, nonce), signature))
}

/// Compares MACs in constant time: `blake3::Hash`'s `PartialEq` is constant-time by design
/// (it uses the `constant_time_eq` crate), so `subtle` is not needed here.
pub fn macs_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// The DHT key under which members of a share announce themselves. Derived from the secret, so
/// outsiders cannot tell which share it belongs to.
pub fn provider_key(secret: &[u8; 32]) -> Vec<u8> {
    blake3::derive_key(PROVIDER_CONTEXT, secret).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        let key = new_write_key();
        Token {
            id: random_bytes().into(),
            secret: random_bytes().into(),
            kind: ShareKind::Records,
            addrs: vec![format!("/ip4/127.0.0.1/tcp/7465/p2p/{}", PeerId::random())],
            writers: writer_public(&key).into(),
            write: Some(key.into()),
        }
    }

    #[test]
    fn token_round_trips_as_one_line() {
        let t = token();
        let text = t.encode();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert!(!text.contains(char::is_whitespace));
        assert_eq!(Token::parse(&format!("  {text}\n")).unwrap(), t);
        assert_eq!(Token::parse(&text).unwrap().dialable_addrs().len(), 1);
    }

    #[test]
    fn bad_tokens_are_refused_clearly() {
        assert_eq!(Token::parse("hello"), Err(TokenError::Prefix));
        let text = token().encode();
        assert!(matches!(
            Token::parse(&text[..text.len() - 5]),
            Err(TokenError::Damaged(_))
        ));
        assert!(matches!(
            Token::parse(&format!("{text}!")),
            Err(TokenError::Damaged(_))
        ));
        assert!(matches!(
            Token::parse(&"x".repeat(MAX_TOKEN_CHARS + 1)),
            Err(TokenError::TooLong(_))
        ));
    }

    #[test]
    fn auth_is_bound_to_secret_peers_nonce_and_role() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let secret = random_bytes();
        let nonce = random_bytes();
        let tag = auth_tag(&secret, &a, &b, &nonce);
        assert!(macs_equal(&tag, &auth_tag(&secret, &a, &b, &nonce)));
        assert_ne!(tag, auth_tag(&random_bytes(), &a, &b, &nonce));
        assert_ne!(tag, auth_tag(&secret, &c, &b, &nonce), "another asker");
        assert_ne!(tag, auth_tag(&secret, &a, &c, &nonce), "another answerer");
        assert_ne!(tag, auth_tag(&secret, &b, &a, &nonce), "roles swapped");
        assert_ne!(
            tag,
            auth_tag(&secret, &a, &b, &random_bytes()),
            "another nonce"
        );
        assert_ne!(
            tag,
            auth_proof(&secret, &a, &b, &nonce),
            "tag is not a proof"
        );
        assert_ne!(provider_key(&secret), secret.to_vec());
    }

    #[test]
    fn writer_signatures_are_bound_to_key_peers_nonce_and_role() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let key = new_write_key();
        let public = writer_public(&key);
        let nonce = random_bytes();
        let sig = writer_sign(&key, Role::Asker, &a, &b, &nonce);
        assert!(writer_verify(&public, &sig, Role::Asker, &a, &b, &nonce));
        assert!(!writer_verify(
            &public,
            &sig,
            Role::Answerer,
            &a,
            &b,
            &nonce
        ));
        assert!(!writer_verify(&public, &sig, Role::Asker, &c, &b, &nonce));
        assert!(!writer_verify(&public, &sig, Role::Asker, &a, &c, &nonce));
        assert!(!writer_verify(
            &public,
            &sig,
            Role::Asker,
            &a,
            &b,
            &random_bytes()
        ));
        let other = writer_public(&new_write_key());
        assert!(!writer_verify(&other, &sig, Role::Asker, &a, &b, &nonce));
        assert!(!writer_verify(
            &public,
            &[0; 64],
            Role::Asker,
            &a,
            &b,
            &nonce
        ));
        assert!(!writer_verify(
            &[0xff; 32],
            &sig,
            Role::Asker,
            &a,
            &b,
            &nonce
        ));
    }

    #[test]
    fn read_only_token_carries_no_write_key() {
        let mut t = token();
        t.write = None;
        let text = t.encode();
        let back = Token::parse(&text).unwrap();
        assert_eq!(back.write, None);
        assert_eq!(back, t);
        assert!(text.len() < token().encode().len());
    }

    #[test]
    fn debug_output_carries_no_secret() {
        let t = token();
        let shown = format!("{t:?}");
        for secret in [*t.secret, *t.write.unwrap()] {
            assert!(!shown.contains(&hex::encode(secret)));
            assert!(!shown.contains(format!("{:?}", &secret[..4]).trim_end_matches(']')));
        }
        assert!(shown.contains(&hex::encode(*t.id)));
    }

    #[test]
    fn token_with_a_foreign_write_key_is_refused() {
        let mut t = token();
        t.write = Some(new_write_key().into());
        assert!(matches!(
            Token::parse(&t.encode()),
            Err(TokenError::Damaged(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = Token::parse(&text);
            let _ = Token::parse(&format!("{TOKEN_PREFIX}{text}"));
        }
    }
}
