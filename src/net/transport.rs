//! The transport stack: TCP, then (for a private mesh) the libp2p pre-shared-key layer, then
//! Noise and Yamux.
//!
//! With a pre-shared key every byte on the connection, the Noise handshake included, is
//! encrypted with it, so a peer without the key cannot even learn our peer id, let alone
//! complete a connection.

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{PeerId, Transport, identity::Keypair, noise, tcp, yamux};

use super::activity::Activity;

/// Streams of any protocol open at once on one connection (Yamux's limit). A peer that opens
/// more has its connection closed by Yamux; a peer that stays below never meets the limit of
/// our own protocol (`swarm::MAX_CONCURRENT_STREAMS`), whose refusals could not be attributed.
pub const MAX_STREAMS_PER_CONNECTION: usize = 128;

/// Builds the transport, with the pre-shared-key layer when `psk` is given.
/// What the peer sends is noted in `activity` (see [`super::activity`]).
pub fn build(
    key: &Keypair,
    psk: Option<PreSharedKey>,
    activity: Activity,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |stream, point| activity.wrap(stream, point));
    let noise = noise::Config::new(key)?;
    let transport = match psk {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1)
            .authenticate(noise)
            .multiplex(yamux_config())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        None => tcp
            .upgrade(Version::V1)
            .authenticate(noise)
            .multiplex(yamux_config())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    };
    Ok(transport)
}

/// Yamux, with at most [`MAX_STREAMS_PER_CONNECTION`] streams on one connection.
fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    #[allow(deprecated)] // The replacement does not exist yet in libp2p-yamux 0.48.
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config
}

/// A new random pre-shared key.
pub fn new_psk() -> PreSharedKey {
    PreSharedKey::new(crate::share::random_bytes())
}
