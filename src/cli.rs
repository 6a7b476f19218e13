//! The command line: every command, flag and argument (`clap`), and what a share target on
//! the command line means. `main.rs` runs them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meshsync::store::ShareKind;

/// Peer-to-peer mesh sync daemon.
#[derive(Debug, Parser)]
#[command(name = "meshsync", version, about)]
pub(crate) struct Cli {
    /// Home directory (identity, config, token). Default: $MESHSYNC_HOME, else the platform's
    /// data directory.
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CliCommand {
    /// Create identity, config and API token in the home (changes nothing if they exist).
    Init {
        /// Peer-to-peer listen multiaddr (repeatable). Default: all interfaces, TCP port 7465.
        #[arg(long = "listen", value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// Control API address. Default: 127.0.0.1:7466; port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        api: Option<String>,
        /// Static peer multiaddr (repeatable).
        #[arg(long = "peer", value_name = "MULTIADDR")]
        peers: Vec<String>,
        /// Disable mDNS discovery.
        #[arg(long)]
        no_mdns: bool,
        /// This device's name, shown to peers beside its id (`name` in the config).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Print this node's peer ID (no daemon needed).
    Id,
    /// Print the link to the daemon's status page, with the API token in it (open it in a
    /// browser on this machine; anyone with the link controls the daemon).
    Open,
    /// Run the daemon in the foreground until SIGINT or SIGTERM.
    Run {
        /// Disable mDNS discovery for this run, whatever the config says.
        #[arg(long)]
        no_mdns: bool,
    },
    /// Show the daemon's peer id, addresses and connected peers.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Keep watching: progress bars on a terminal; elsewhere, each share's status line
        /// printed (with the time) whenever it changes. Runs until interrupted.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// Seconds between updates with --watch.
        #[arg(long, default_value_t = 1.0, requires = "watch")]
        interval: f64,
    },
    /// Show what the daemon's store file holds: rows and bytes per table. Reads every page of
    /// the store (seconds on a big one).
    Store {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List connected peers.
    Peers {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage peers.
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// Create, join and list shares.
    Share {
        #[command(subcommand)]
        command: ShareCommand,
    },
    /// Read and write records of a records share.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Follow what happens (files and records changed, conflicts, peers, share states,
    /// errors) until interrupted.
    Events {
        /// Print one JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Only this share's events.
        #[arg(long)]
        share: Option<String>,
        /// First replay the events the daemon still holds after this id (0: all it holds).
        #[arg(long, value_name = "ID")]
        since: Option<u64>,
    },
    /// Private mesh keys (libp2p pre-shared keys).
    Psk {
        #[command(subcommand)]
        command: PskCommand,
    },
    /// Scripted multi-peer scenarios with faults (see config/lab/).
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LabCommand {
    /// Run a scenario: start its peers, run its workload and faults, check the invariants.
    /// Exit code 0: every invariant held; 1: one was violated; 2: the scenario could not be run
    /// (bad file, or its daemons could not start); 130: interrupted.
    Run {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// Also write the report as JSON here.
        #[arg(long, value_name = "REPORT.json")]
        json: Option<PathBuf>,
        /// The workload's seed (instead of the file's).
        #[arg(long)]
        seed: Option<u64>,
        /// Where to keep the peers' homes (default: a new directory under the temp directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Keep the peers' homes and daemon logs also when every invariant held (they are
        /// always kept after a violation).
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PskCommand {
    /// Write a new random pre-shared key file (readable by its owner only). Copy it to every
    /// peer and point `psk_file` in their config at it.
    New {
        /// Where to write it; an existing file is never overwritten.
        file: PathBuf,
    },
}

/// What a share holds: records under a name, or a folder at a path.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct ShareTarget {
    /// A key/value record store with this local name.
    #[arg(long, value_name = "NAME")]
    pub(crate) records: Option<String>,
    /// A folder (created if missing; existing files are kept and merged).
    #[arg(long, value_name = "PATH")]
    pub(crate) folder: Option<PathBuf>,
}

/// The local name of a folder share, when its directory's name will not do (two folders of
/// the same name).
#[derive(Debug, clap::Args)]
pub(crate) struct FolderName {
    /// Local name of the folder share (default: the folder's directory name).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
}

impl ShareTarget {
    /// Kind, local name and (for folders) absolute path. A folder share is named `name`, or
    /// after its directory.
    pub(crate) fn resolve(self, name: FolderName) -> Result<(ShareKind, String, Option<PathBuf>)> {
        match (self.records, self.folder) {
            (Some(_), None) if name.name.is_some() => {
                anyhow::bail!("--name is for folder shares; a records share is named by --records")
            }
            (Some(name), None) => Ok((ShareKind::Records, name, None)),
            (None, Some(path)) => {
                let absolute = std::path::absolute(&path)
                    .with_context(|| format!("cannot resolve {}", path.display()))?;
                let name = name.name.unwrap_or_else(|| {
                    absolute
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| "root".into())
                });
                Ok((ShareKind::Folder, name, Some(absolute)))
            }
            _ => anyhow::bail!("give either --records NAME or --folder PATH"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ShareCommand {
    /// Create a share; prints its token (one line) on stdout.
    Create {
        #[command(flatten)]
        what: ShareTarget,
        #[command(flatten)]
        name: FolderName,
    },
    /// Join a share from a token.
    Join {
        /// The token from `share create` or `share token`.
        token: String,
        #[command(flatten)]
        what: ShareTarget,
        #[command(flatten)]
        name: FolderName,
    },
    /// List shares.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a fresh token for a share (with this node's current addresses).
    Token {
        /// Share name or id.
        share: String,
        /// A token for a read-only member: it receives everything, and no other member takes
        /// its edits.
        #[arg(long)]
        read_only: bool,
    },
    /// Allow only these peers to be members of a share here (besides the global
    /// `trusted_peers`); members not listed are dropped at once.
    Trust {
        /// Share name or id.
        share: String,
        /// Peer ids to add to the share's allowlist.
        #[arg(required = true)]
        peers: Vec<String>,
    },
    /// Remove peers from a share's allowlist (an empty list admits anyone with a token).
    Untrust {
        /// Share name or id.
        share: String,
        /// Peer ids to remove.
        #[arg(required = true)]
        peers: Vec<String>,
    },
    /// Stop exchanging anything with the share's members (a folder is neither scanned nor
    /// written) until `share resume`.
    Pause {
        /// Share name or id.
        share: String,
    },
    /// Stop syncing a share and forget its state here; a folder's files stay.
    Leave {
        /// Share name or id.
        share: String,
    },
    /// Resume a paused share; or, with a flag, decide for a folder share held by the
    /// mass-deletion breaker (state `held` in `status`).
    Resume {
        /// Share name or id.
        share: String,
        /// The deletes were meant: send them to the members.
        #[arg(long, conflicts_with = "restore")]
        accept_deletes: bool,
        /// They were not: fetch the deleted files back from the members.
        #[arg(long)]
        restore: bool,
    },
    /// List the versions a folder share keeps of files peers deleted or replaced, oldest first.
    Versions {
        /// Share name or id.
        share: String,
        /// Only this file's (its path in the folder).
        path: Option<String>,
        /// Print a JSON array of {path, at, size, kept_at}.
        #[arg(long)]
        json: bool,
    },
    /// Put a kept version back at its path, as a new local edit that syncs (the file there now
    /// is kept as a version first).
    Restore {
        /// Share name or id.
        share: String,
        /// The file's path in the folder.
        path: String,
        /// The newest version kept at or before this time (RFC 3339, e.g.
        /// 2026-12-02T17:30:00Z); without it, the newest.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KvCommand {
    /// Write a record.
    Put {
        /// Share name or id.
        share: String,
        /// The key (UTF-8, up to 1 KiB).
        key: String,
        /// The value (up to 1 MiB); `-` or nothing reads it from stdin.
        value: Option<String>,
    },
    /// Print a record's value (raw bytes) on stdout.
    Get {
        /// Share name or id.
        share: String,
        /// The key.
        key: String,
        /// Print JSON with the value, its origin and any concurrent conflicting versions.
        #[arg(long)]
        conflicts: bool,
    },
    /// Delete a record.
    Del {
        /// Share name or id.
        share: String,
        /// The key.
        key: String,
    },
    /// List keys (one per line), or keys and values with --json.
    List {
        /// Share name or id.
        share: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Print a JSON array of {key, value | value_base64}.
        #[arg(long)]
        json: bool,
    },
    /// Print one JSON line per change as it lands, local or remote, until interrupted.
    Watch {
        /// Share name or id.
        share: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PeerCommand {
    /// Dial a peer now and remember it as a static peer in the config; waits (up to 15 s) to
    /// say whether it answered.
    Add {
        /// The peer's multiaddr, e.g. /ip4/192.0.2.7/tcp/7465/p2p/12D3Koo...
        multiaddr: String,
        /// Only store and dial it; do not wait for an answer.
        #[arg(long)]
        no_wait: bool,
    },
    /// Disconnect a peer and refuse it from now on (remembered in `blocked_peers`).
    Block {
        /// The peer id.
        peer_id: String,
    },
    /// Stop refusing a blocked peer (removed from `blocked_peers`).
    Unblock {
        /// The peer id.
        peer_id: String,
    },
    /// Stop dialling a static peer and remove it from `peers` in the config.
    Remove {
        /// A configured address, or a peer id (every address ending in `/p2p/<id>`).
        peer: String,
    },
}
