//! The daemon's configuration, in two layers.
//!
//! [`RawConfig`] is exactly what `config.toml` says: a serde struct where every field has a
//! documented default and unknown keys are rejected, so a typo fails loudly at start instead of
//! being silently ignored. [`Config`] is what the program uses: it is produced once, by
//! [`RawConfig::validate`], with every address parsed, so the rest of the code never sees a string
//! that might be malformed. Parsing works from a string, so tests need no files.
//!
//! [`render`] writes a commented `config.toml` with every key; `meshsync init` uses it and
//! `config/meshsync.example.toml` is its output for the defaults (a test keeps them identical).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

mod edit;
mod folders;
mod size;

pub use edit::{
    add_blocked_peer, add_bootstrap_peer, add_static_peer, remove_blocked_peer, remove_static_peers,
};

pub use folders::{
    BreakerLimit, DEFAULT_BREAKER_MIN_FILES, DEFAULT_BREAKER_PERCENT, DEFAULT_VERSIONS_DAYS,
    DEFAULT_VERSIONS_PERCENT, FolderSettings, MinFreeDisk, RawShareSettings, VersionsKind,
    VersionsPolicy,
};
use folders::{kind_name, render_shares};

/// TCP port peers listen on unless configured otherwise.
pub const DEFAULT_P2P_PORT: u16 = 7465;
/// Loopback port of the control API unless configured otherwise.
pub const DEFAULT_API_PORT: u16 = 7466;
/// How many peers found by mDNS or Kademlia the daemon dials on its own.
pub const DEFAULT_MAX_DISCOVERED_PEERS: usize = 64;
/// Default of `inbound_buffer_total` (the network's `INBOUND_BUFFER_TOTAL`).
pub const DEFAULT_INBOUND_BUFFER_TOTAL: &str = "64 MiB";
/// Default of `inbound_buffer_per_peer` (the network's `INBOUND_BUFFER_PER_PEER`).
pub const DEFAULT_INBOUND_BUFFER_PER_PEER: &str = "8 MiB";
/// Smallest inbound buffer a peer may be given: one piece of a frame, read at once.
const MIN_INBOUND_BUFFER_PER_PEER: u64 = 64 * 1024;
/// Largest inbound buffer total accepted.
const MAX_INBOUND_BUFFER_TOTAL: u64 = 4 << 30;
/// Everything that can be wrong with a configuration, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML parser's message; it names the key and line.
        message: String,
    },
    /// A key has a value of the right type that still makes no sense.
    #[error("invalid config file {path}: key `{key}`: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key, with an index for list items (`peers[2]`).
        key: String,
        /// What is wrong with the value.
        message: String,
    },
    /// Editing the config file (for `peer add`) failed.
    #[error("cannot update config file {path}: {message}")]
    Update {
        /// The config file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A device name (`name`) has at most this many characters; a peer's is cut to it.
pub const MAX_NAME_CHARS: usize = 64;

/// `config.toml` as written, before validation. Every field has a default, so an empty file is a
/// valid configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// This device's name, shown to peers; empty: none.
    pub name: String,
    /// Multiaddrs the peer-to-peer listener binds to.
    pub listen: Vec<String>,
    /// `IP:PORT` of the control API; port 0 picks a free port (written to `api.addr`).
    pub api: String,
    /// Must be true to bind the API to a non-loopback address.
    pub api_allow_remote: bool,
    /// Static peers, dialled at start and redialled when the connection drops.
    pub peers: Vec<String>,
    /// Kademlia bootstrap peers (multiaddrs ending in `/p2p/<id>`).
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// How many discovered (mDNS, Kademlia) peers the daemon connects to on its own.
    pub max_discovered_peers: usize,
    /// If not empty, the only peer ids allowed to connect at all.
    pub trusted_peers: Vec<String>,
    /// Peer ids whose connections are refused (`meshsync peer block` appends here).
    pub blocked_peers: Vec<String>,
    /// Path of a pre-shared key file (`meshsync psk new`); relative paths are relative to the
    /// config file. Empty: no private mesh.
    pub psk_file: String,
    /// Mass-deletion breaker: a folder share whose local deletes would remove more than this
    /// percentage of its entries (and more than `breaker_min_files`) is held. 100 turns it off.
    pub breaker_percent: u8,
    /// Mass-deletion breaker: deletes up to this many never hold a share.
    pub breaker_min_files: u64,
    /// Mass-deletion breaker: also hold a share when peers' deletes would remove as much here.
    pub breaker_remote: bool,
    /// Space every folder's file system keeps free: `""` (1 % or 1 GiB, whichever is smaller),
    /// a size (`"2 GiB"`) or a percentage (`"5%"`).
    pub min_free_disk: String,
    /// What folders keep of files peers deleted or replaced: `none`, `trash`, `simple`,
    /// `staggered`.
    pub versions: VersionsKind,
    /// Versions older than this many days go.
    pub versions_max_age_days: u32,
    /// Versions take at most this percentage of the folder's file system (oldest go first).
    pub versions_max_percent: u8,
    /// Per-share settings, by the share's local name.
    pub shares: BTreeMap<String, RawShareSettings>,
    /// Bytes all peers together may make us buffer for requests still arriving (a size).
    pub inbound_buffer_total: String,
    /// Bytes one peer may make us buffer for requests still arriving (a size).
    pub inbound_buffer_per_peer: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}"),
                format!("/ip6/::/tcp/{DEFAULT_P2P_PORT}"),
            ],
            api: format!("127.0.0.1:{DEFAULT_API_PORT}"),
            api_allow_remote: false,
            peers: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            max_discovered_peers: DEFAULT_MAX_DISCOVERED_PEERS,
            trusted_peers: Vec::new(),
            blocked_peers: Vec::new(),
            psk_file: String::new(),
            breaker_percent: DEFAULT_BREAKER_PERCENT,
            breaker_min_files: DEFAULT_BREAKER_MIN_FILES,
            breaker_remote: false,
            min_free_disk: String::new(),
            inbound_buffer_total: DEFAULT_INBOUND_BUFFER_TOTAL.into(),
            inbound_buffer_per_peer: DEFAULT_INBOUND_BUFFER_PER_PEER.into(),
            versions: VersionsKind::Simple,
            versions_max_age_days: DEFAULT_VERSIONS_DAYS,
            versions_max_percent: DEFAULT_VERSIONS_PERCENT,
            shares: BTreeMap::new(),
        }
    }
}

/// A bootstrap peer: Kademlia needs both the id and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapPeer {
    /// The peer's id, from the trailing `/p2p/` component.
    pub peer_id: PeerId,
    /// The full address, including `/p2p/<id>`.
    pub addr: Multiaddr,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (for messages and for `peer add`).
    pub path: PathBuf,
    /// This device's name, said to peers in the hello (`None`: peers show only its id).
    pub name: Option<String>,
    /// Peer-to-peer listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Control API socket address.
    pub api: SocketAddr,
    /// Static peers.
    pub peers: Vec<Multiaddr>,
    /// Kademlia bootstrap peers.
    pub bootstrap: Vec<BootstrapPeer>,
    /// Whether mDNS discovery runs.
    pub mdns: bool,
    /// Upper bound on auto-dialled discovered peers.
    pub max_discovered_peers: usize,
    /// If not empty, the only peers allowed to connect.
    pub trusted_peers: Vec<PeerId>,
    /// Peers whose connections are refused.
    pub blocked_peers: Vec<PeerId>,
    /// The private mesh key: peers without it cannot even complete a handshake.
    pub psk: Option<libp2p::pnet::PreSharedKey>,
    /// Bytes all peers together may make us buffer for requests still arriving.
    pub inbound_buffer_total: usize,
    /// Bytes one peer may make us buffer for requests still arriving.
    pub inbound_buffer_per_peer: usize,
    /// Folder shares' settings (global and per share).
    pub folders: FolderSettings,
}

impl RawConfig {
    /// Parses TOML text; `path` only names the source in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// `inbound_buffer_total` and `inbound_buffer_per_peer`, checked: sizes, one peer's at least
    /// 64 KiB and at most the total, the total at most 4 GiB.
    fn inbound_buffer(
        &self,
        invalid: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(usize, usize), ConfigError> {
        let total = size::parse_bytes(&self.inbound_buffer_total)
            .map_err(|e| invalid("inbound_buffer_total".into(), e))?;
        let per_peer = size::parse_bytes(&self.inbound_buffer_per_peer)
            .map_err(|e| invalid("inbound_buffer_per_peer".into(), e))?;
        if total > MAX_INBOUND_BUFFER_TOTAL {
            return Err(invalid(
                "inbound_buffer_total".into(),
                "at most 4 GiB".into(),
            ));
        }
        if per_peer < MIN_INBOUND_BUFFER_PER_PEER || per_peer > total {
            return Err(invalid(
                "inbound_buffer_per_peer".into(),
                "at least 64 KiB and at most inbound_buffer_total".into(),
            ));
        }
        Ok((total as usize, per_peer as usize))
    }

    /// Checks every value and produces the [`Config`] the program uses.
    pub fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if self.listen.is_empty() {
            return Err(invalid(
                "listen".into(),
                "needs at least one address".into(),
            ));
        }
        let listen = parse_addrs("listen", &self.listen, path)?;
        let name = self.name.trim();
        if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(invalid(
                "name".into(),
                format!(
                    "at most {} characters, none of them control characters",
                    MAX_NAME_CHARS
                ),
            ));
        }
        let name = (!name.is_empty()).then(|| name.to_owned());
        let api: SocketAddr = self
            .api
            .parse()
            .map_err(|e| invalid("api".into(), format!("`{}` is not IP:PORT ({e})", self.api)))?;
        if !api.ip().is_loopback() && !self.api_allow_remote {
            return Err(invalid(
                "api".into(),
                format!(
                    "{api} is not a loopback address; set api_allow_remote = true to expose the \
                     control API beyond this machine"
                ),
            ));
        }
        let peers = parse_addrs("peers", &self.peers, path)?;
        let mut bootstrap = Vec::new();
        for (i, addr) in parse_addrs("bootstrap", &self.bootstrap, path)?
            .into_iter()
            .enumerate()
        {
            let peer_id = peer_id_of(&addr).ok_or_else(|| {
                invalid(
                    format!("bootstrap[{i}]"),
                    format!("`{addr}` must end in /p2p/<peer id>"),
                )
            })?;
            bootstrap.push(BootstrapPeer { peer_id, addr });
        }
        let trusted_peers = parse_peer_ids("trusted_peers", &self.trusted_peers, path)?;
        let blocked_peers = parse_peer_ids("blocked_peers", &self.blocked_peers, path)?;
        let psk = if self.psk_file.is_empty() {
            None
        } else {
            let file = path.parent().unwrap_or(Path::new(".")).join(&self.psk_file);
            let text = std::fs::read_to_string(&file).map_err(|e| {
                invalid(
                    "psk_file".into(),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            Some(text.parse().map_err(|e| {
                invalid(
                    "psk_file".into(),
                    format!(
                        "{} is not a pre-shared key file ({e}); make one with `meshsync psk new`",
                        file.display()
                    ),
                )
            })?)
        };
        let percent_ok = |key: String, percent: u8| {
            if percent > 100 {
                Err(invalid(
                    key,
                    format!("{percent} is not a percentage (0–100)"),
                ))
            } else {
                Ok(())
            }
        };
        percent_ok("breaker_percent".into(), self.breaker_percent)?;
        percent_ok("versions_max_percent".into(), self.versions_max_percent)?;
        let min_free_disk = MinFreeDisk::parse(&self.min_free_disk)
            .map_err(|e| invalid("min_free_disk".into(), e))?;
        let (inbound_buffer_total, inbound_buffer_per_peer) = self.inbound_buffer(&invalid)?;
        for (name, settings) in &self.shares {
            if let Some(percent) = settings.breaker_percent {
                percent_ok(format!("shares.{name}.breaker_percent"), percent)?;
            }
            if let Some(percent) = settings.versions_max_percent {
                percent_ok(format!("shares.{name}.versions_max_percent"), percent)?;
            }
            if let Some(text) = &settings.min_free_disk {
                MinFreeDisk::parse(text)
                    .map_err(|e| invalid(format!("shares.{name}.min_free_disk"), e))?;
            }
        }
        let folders = FolderSettings {
            breaker: BreakerLimit {
                percent: self.breaker_percent,
                min_files: self.breaker_min_files,
            },
            min_free_disk,
            breaker_remote: self.breaker_remote,
            versions: VersionsPolicy {
                kind: self.versions,
                max_age: std::time::Duration::from_secs(
                    86_400 * u64::from(self.versions_max_age_days),
                ),
                max_percent: self.versions_max_percent,
            },
            shares: self.shares,
            device_name: name.clone(),
        };
        Ok(Config {
            path: path.to_owned(),
            name,
            listen,
            api,
            peers,
            bootstrap,
            mdns: self.mdns,
            max_discovered_peers: self.max_discovered_peers,
            trusted_peers,
            blocked_peers,
            psk,
            folders,
            inbound_buffer_total,
            inbound_buffer_per_peer,
        })
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        RawConfig::parse(&text, path)?.validate(path)
    }
}

/// The peer id at the end of a multiaddr, if it has one.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// Parses a multiaddr given by a user, with a message that says what was expected.
pub fn parse_multiaddr(text: &str) -> Result<Multiaddr, String> {
    text.parse::<Multiaddr>().map_err(|e| {
        format!(
            "`{text}` is not a multiaddr ({e}); expected e.g. /ip4/192.0.2.7/tcp/7465/p2p/<peer id>"
        )
    })
}

fn parse_peer_ids(key: &str, items: &[String], path: &Path) -> Result<Vec<PeerId>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.trim()
                .parse::<PeerId>()
                .map_err(|e| ConfigError::Invalid {
                    path: path.to_owned(),
                    key: format!("{key}[{i}]"),
                    message: format!("`{text}` is not a peer id ({e})"),
                })
        })
        .collect()
}

fn parse_addrs(key: &str, items: &[String], path: &Path) -> Result<Vec<Multiaddr>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, text)| {
            parse_multiaddr(text).map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                key: format!("{key}[{i}]"),
                message,
            })
        })
        .collect()
}

/// Writes a complete, commented `config.toml` for `raw`.
pub fn render(raw: &RawConfig) -> String {
    let list =
        |items: &[String]| toml::Value::Array(items.iter().cloned().map(Into::into).collect());
    let defaults = RawConfig::default();
    format!(
        r#"# meshsync configuration. Every key is listed with its meaning and default.
# Unknown keys or bad values stop the daemon at start with a message naming the key.

# Multiaddrs the peer-to-peer (TCP, Noise, Yamux) listener binds to. Port 0 picks a free port.
# Default: {default_listen}
listen = {listen}

# This device's name: peers show it beside its peer id (status, peers). At most 64 characters.
# `meshsync init --name NAME` sets it.
# Default: ""
name = {name}

# IP:PORT of the local control API used by the CLI and scripts (HTTP, bearer token in `api-token`).
# Port 0 picks a free port and writes the real address to `api.addr` in the home directory.
# Default: "{default_api}"
api = "{api}"

# The API only binds to loopback addresses unless this is true. Anyone who can reach the API and
# holds the token controls the daemon.
# Default: false
api_allow_remote = {api_allow_remote}

# Static peers: dialled at start and redialled with backoff whenever the connection drops.
# Multiaddrs, best ending in /p2p/<peer id>. `meshsync peer add` appends here.
# Default: []
peers = {peers}

# Kademlia bootstrap peers, for discovery beyond the local network. Must end in /p2p/<peer id>.
# Default: []
bootstrap = {bootstrap}

# Find peers on the local network with mDNS (multicast DNS). `meshsync init --no-mdns` sets false.
# Default: true
mdns = {mdns}

# How many peers discovered through mDNS or Kademlia the daemon connects to on its own.
# Static and bootstrap peers do not count against this.
# Default: {default_max}
max_discovered_peers = {max}

# If not empty, only these peer ids may connect at all; everyone else is refused.
# Default: []
trusted_peers = {trusted}

# Peer ids whose connections are refused. `meshsync peer block ID` appends here.
# Default: []
blocked_peers = {blocked}

# Private mesh: a pre-shared key file (`meshsync psk new FILE`), relative to this file. Peers
# without the same key cannot complete a connection at all. Every peer needs the same file.
# Default: ""
psk_file = {psk_file}

# Mass-deletion breaker: a folder share whose local deletes (within a minute) would remove more
# than this percentage of its files, and more than `breaker_min_files` of them, is held: nothing
# is sent until `meshsync share resume SHARE --accept-deletes` (send them) or `--restore` (fetch
# the files back from members). 100 turns the breaker off.
# Default: {default_percent}
breaker_percent = {percent}

# Mass-deletion breaker: deleting up to this many files never holds a share.
# Default: {default_min_files}
breaker_min_files = {min_files}

# Space every folder's file system keeps free: no download starts that would go below it. A size
# ("2 GiB", "500 MiB"), a percentage of the file system ("5%"), or "" for 1 % or 1 GiB,
# whichever is smaller. When space runs short, the oldest files in `.meshsync/trash` go first.
# Default: "{default_min_free}"
min_free_disk = {min_free}

# What folders keep, in .meshsync/versions/ under their own paths, of files that peers' changes
# deleted or replaced: "none" (nothing, beyond the next cleanup), "trash" (everything for an
# hour), "simple" (everything within the limits below), "staggered" (every version of the last
# hour, one per hour for a day, then one per day, within the limits). `meshsync share versions`
# lists them, `meshsync share restore` puts one back.
# Default: "{default_versions}"
versions = "{versions}"

# Versions older than this many days go.
# Default: {default_versions_days}
versions_max_age_days = {versions_days}

# Versions take at most this percentage of the folder's file system; the oldest go first (and
# whenever the disk runs short of min_free_disk).
# Default: {default_versions_percent}
versions_max_percent = {versions_percent}

# Mass-deletion breaker for peers' deletes: when true, deletes from peers that would remove as
# much here (same limits) are held too, and each peer holding them must accept or restore. Off
# by default: a delete its author accepted (`share resume --accept-deletes`) should not be held
# again on every member. On, it guards against peers without a breaker (older meshsync, or
# breaker_percent = 100).
# Default: false
breaker_remote = {breaker_remote}

# Bytes all peers together may make the daemon buffer for requests still arriving (a size). A
# peer over its share below has the request refused; when the total is used up, the largest
# half-received request makes room for another peer's.
# Default: "{default_inbound_total}"
inbound_buffer_total = {inbound_total}

# Bytes one peer may make the daemon buffer for requests still arriving (at least 64 KiB, at most
# inbound_buffer_total).
# Default: "{default_inbound_peer}"
inbound_buffer_per_peer = {inbound_peer}

# Per-share settings override the ones above for one share, by its name (`meshsync share list`):
# [shares."photos"]
# breaker_percent = 20
{shares}"#,
        name = toml::Value::String(raw.name.clone()),
        default_listen = list(&defaults.listen),
        listen = list(&raw.listen),
        default_api = defaults.api,
        api = raw.api,
        api_allow_remote = raw.api_allow_remote,
        peers = list(&raw.peers),
        bootstrap = list(&raw.bootstrap),
        mdns = raw.mdns,
        default_max = defaults.max_discovered_peers,
        max = raw.max_discovered_peers,
        trusted = list(&raw.trusted_peers),
        blocked = list(&raw.blocked_peers),
        psk_file = toml::Value::String(raw.psk_file.clone()),
        default_percent = defaults.breaker_percent,
        percent = raw.breaker_percent,
        default_min_files = defaults.breaker_min_files,
        default_min_free = defaults.min_free_disk,
        breaker_remote = raw.breaker_remote,
        default_inbound_total = defaults.inbound_buffer_total,
        inbound_total = toml::Value::String(raw.inbound_buffer_total.clone()),
        default_inbound_peer = defaults.inbound_buffer_per_peer,
        inbound_peer = toml::Value::String(raw.inbound_buffer_per_peer.clone()),
        default_versions = kind_name(defaults.versions),
        versions = kind_name(raw.versions),
        default_versions_days = defaults.versions_max_age_days,
        versions_days = raw.versions_max_age_days,
        default_versions_percent = defaults.versions_max_percent,
        versions_percent = raw.versions_max_percent,
        min_free = toml::Value::String(raw.min_free_disk.clone()),
        min_files = raw.breaker_min_files,
        shares = render_shares(&raw.shares),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> PathBuf {
        PathBuf::from("/etc/meshsync/config.toml")
    }

    #[test]
    fn empty_file_gives_defaults() {
        let raw = RawConfig::parse("", &path()).unwrap();
        assert_eq!(raw, RawConfig::default());
        let config = raw.validate(&path()).unwrap();
        assert_eq!(config.api.port(), DEFAULT_API_PORT);
        assert!(config.mdns);
    }

    #[test]
    fn example_file_is_the_rendered_defaults_and_parses() {
        let example = include_str!("../config/meshsync.example.toml");
        assert_eq!(
            example,
            render(&RawConfig::default()),
            "regenerate config/meshsync.example.toml"
        );
        let raw = RawConfig::parse(example, &path()).unwrap();
        assert_eq!(raw, RawConfig::default());
        raw.validate(&path()).unwrap();
    }

    #[test]
    fn rendered_config_round_trips() {
        let raw = RawConfig {
            name: "Ada's \"laptop\"".into(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            api: "127.0.0.1:0".into(),
            api_allow_remote: false,
            peers: vec![
                "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                    .into(),
            ],
            bootstrap: vec![],
            mdns: false,
            max_discovered_peers: 3,
            trusted_peers: vec!["12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into()],
            blocked_peers: vec![],
            psk_file: "keys/swarm \"key\"".into(),
            min_free_disk: "2 GiB".into(),
            versions: VersionsKind::Trash,
            versions_max_age_days: 9,
            versions_max_percent: 4,
            breaker_percent: 30,
            breaker_min_files: 7,
            breaker_remote: true,
            shares: [(
                "my \"photos\"".to_owned(),
                RawShareSettings {
                    breaker_percent: Some(10),
                    breaker_min_files: None,
                    min_free_disk: Some("5%".into()),
                    breaker_remote: Some(true),
                    versions: Some(VersionsKind::Staggered),
                    versions_max_age_days: Some(3),
                    versions_max_percent: None,
                },
            )]
            .into(),
            inbound_buffer_total: "32 MiB".into(),
            inbound_buffer_per_peer: "1 MiB".into(),
        };
        assert_eq!(RawConfig::parse(&render(&raw), &path()).unwrap(), raw);
    }

    #[test]
    fn min_free_disk_takes_sizes_and_percentages() {
        use MinFreeDisk::*;
        for (text, want) in [
            ("", Default),
            ("5%", Percent(5)),
            ("500 MiB", Bytes(500 << 20)),
            ("2GiB", Bytes(2 << 30)),
            ("1000", Bytes(1000)),
            ("3 GB", Bytes(3_000_000_000)),
        ] {
            assert_eq!(MinFreeDisk::parse(text), Ok(want), "{text}");
        }
        for bad in ["101%", "5 parsecs", "GiB", "-1", "99999999999 TiB"] {
            assert!(MinFreeDisk::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Default.bytes(10 << 30), (10 << 30) / 100);
        assert_eq!(Default.bytes(1 << 40), 1 << 30);
        let config = RawConfig::parse(
            "min_free_disk = \"1 MiB\"\n[shares.a]\nmin_free_disk = \"7%\"",
            &path(),
        )
        .unwrap()
        .validate(&path())
        .unwrap();
        assert_eq!(config.folders.min_free_disk_for("a"), Percent(7));
        assert_eq!(config.folders.min_free_disk_for("b"), Bytes(1 << 20));
        let e = RawConfig::parse("min_free_disk = \"lots\"", &path())
            .unwrap()
            .validate(&path())
            .unwrap_err();
        assert!(e.to_string().contains("`min_free_disk`"), "{e}");
    }

    #[test]
    fn the_breaker_limit_is_global_unless_a_share_overrides_it() {
        let text = "breaker_min_files = 5\n[shares.photos]\nbreaker_percent = 20\n";
        let config = RawConfig::parse(text, &path())
            .unwrap()
            .validate(&path())
            .unwrap();
        let limit = |percent, min_files| BreakerLimit { percent, min_files };
        assert_eq!(config.folders.breaker_for("photos"), limit(20, 5));
        assert_eq!(
            config.folders.breaker_for("docs"),
            limit(DEFAULT_BREAKER_PERCENT, 5)
        );
        for (text, key) in [
            ("breaker_percent = 101", "`breaker_percent`"),
            (
                "[shares.x]\nbreaker_percent = 200",
                "`shares.x.breaker_percent`",
            ),
        ] {
            let e = RawConfig::parse(text, &path())
                .and_then(|raw| raw.validate(&path()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = RawConfig::parse("[shares.x]\nbreaker = 1", &path()).unwrap_err();
        assert!(e.to_string().contains("breaker"), "{e}");
    }

    #[test]
    fn psk_file_is_read_relative_to_the_config_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let key = libp2p::pnet::PreSharedKey::new([7; 32]);
        std::fs::write(dir.path().join("swarm.key"), key.to_key_file()).unwrap();
        std::fs::write(dir.path().join("bad.key"), "hello\n").unwrap();
        let with = |file: &str| RawConfig {
            psk_file: file.into(),
            ..RawConfig::default()
        };
        let loaded = with("swarm.key").validate(&config).unwrap();
        assert_eq!(loaded.psk, Some(key));
        for (file, expected) in [
            ("bad.key", "not a pre-shared key file"),
            ("missing.key", "cannot read"),
        ] {
            let err = with(file).validate(&config).unwrap_err().to_string();
            assert!(err.contains("psk_file") && err.contains(expected), "{err}");
        }
        assert!(
            RawConfig::default()
                .validate(&config)
                .unwrap()
                .psk
                .is_none()
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = RawConfig::parse("mdsn = false\n", &path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mdsn"), "{err}");
        assert!(err.contains("/etc/meshsync/config.toml"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = RawConfig::parse("mdns = \"yes\"\n", &path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mdns"), "{err}");
    }

    #[test]
    fn bad_multiaddr_names_key_and_index() {
        let raw = RawConfig::parse(
            "peers = [\"/ip4/127.0.0.1/tcp/1\", \"not-an-addr\"]\n",
            &path(),
        )
        .unwrap();
        let err = raw.validate(&path()).unwrap_err().to_string();
        assert!(err.contains("peers[1]"), "{err}");
        assert!(err.contains("not-an-addr"), "{err}");
    }

    #[test]
    fn inbound_buffer_sizes_are_checked() {
        let load = |text: &str| RawConfig::parse(text, &path()).unwrap().validate(&path());
        let config =
            load("inbound_buffer_total = \"16 MiB\"\ninbound_buffer_per_peer = \"2MiB\"\n")
                .unwrap();
        assert_eq!(
            (config.inbound_buffer_total, config.inbound_buffer_per_peer),
            (16 << 20, 2 << 20)
        );
        let defaults = load("").unwrap();
        assert_eq!(
            (
                defaults.inbound_buffer_total,
                defaults.inbound_buffer_per_peer
            ),
            (64 << 20, 8 << 20)
        );
        for (text, key) in [
            ("inbound_buffer_total = \"lots\"\n", "inbound_buffer_total"),
            (
                "inbound_buffer_per_peer = \"1 KiB\"\n",
                "inbound_buffer_per_peer",
            ),
            (
                "inbound_buffer_per_peer = \"1 GiB\"\n",
                "inbound_buffer_per_peer",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn bootstrap_needs_peer_id() {
        let raw = RawConfig::parse("bootstrap = [\"/ip4/127.0.0.1/tcp/1\"]\n", &path()).unwrap();
        let err = raw.validate(&path()).unwrap_err().to_string();
        assert!(
            err.contains("bootstrap[0]") && err.contains("/p2p/"),
            "{err}"
        );
    }

    #[test]
    fn remote_api_needs_explicit_switch() {
        let raw = RawConfig::parse("api = \"0.0.0.0:7466\"\n", &path()).unwrap();
        let err = raw.clone().validate(&path()).unwrap_err().to_string();
        assert!(err.contains("api_allow_remote"), "{err}");
        let raw = RawConfig {
            api_allow_remote: true,
            ..raw
        };
        raw.validate(&path()).unwrap();
    }

    #[test]
    fn add_static_peer_keeps_comments_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, render(&RawConfig::default())).unwrap();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4000".parse().unwrap();
        assert!(add_static_peer(&file, &addr).unwrap());
        assert!(!add_static_peer(&file, &addr).unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("# Static peers"));
        let config = Config::load(&file).unwrap();
        assert_eq!(config.peers, vec![addr]);
    }
}
