//! The `meshsync` command: the daemon (`run`), the commands that need no daemon (`init`, `id`),
//! and thin clients of the control API for everything else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meshsync::api::{AddPeer, PeerAdded, Status};
use meshsync::client::ApiClient;
use meshsync::config::Config;
use meshsync::home::{Home, InitOptions, InitOutcome};
use meshsync::net::PeerStatus;

/// Peer-to-peer mesh sync daemon.
#[derive(Debug, Parser)]
#[command(name = "meshsync", version, about)]
struct Cli {
    /// Home directory (identity, config, token). Default: $MESHSYNC_HOME, else the platform's
    /// data directory.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
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
    },
    /// Print this node's peer ID (no daemon needed).
    Id,
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
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Dial a peer now and remember it as a static peer in the config.
    Add {
        /// The peer's multiaddr, e.g. /ip4/192.0.2.7/tcp/7465/p2p/12D3Koo...
        multiaddr: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshsync: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let home = Home::resolve(cli.home)?;
    match cli.command {
        CliCommand::Init {
            listen,
            api,
            peers,
            no_mdns,
        } => {
            let options = InitOptions {
                listen,
                api,
                peers,
                no_mdns,
            };
            match home.init(&options)? {
                InitOutcome::Created(id) => {
                    eprintln!("initialised meshsync home {}", home.dir().display());
                    println!("{id}");
                }
                InitOutcome::AlreadyInitialised(id) => {
                    eprintln!(
                        "{} is already initialised; nothing changed",
                        home.dir().display()
                    );
                    println!("{id}");
                }
            }
            Ok(())
        }
        CliCommand::Id => {
            println!("{}", home.load_identity()?.public().to_peer_id());
            Ok(())
        }
        CliCommand::Run { no_mdns } => run_daemon(home, no_mdns),
        CliCommand::Status { json } => {
            let status: Status = ApiClient::for_home(&home)?.get("/v1/status")?;
            if json {
                print_json(&status)
            } else {
                print_status(&status);
                Ok(())
            }
        }
        CliCommand::Peers { json } => {
            let peers: Vec<PeerStatus> = ApiClient::for_home(&home)?.get("/v1/peers")?;
            if json {
                print_json(&peers)
            } else {
                print_peers(&peers);
                Ok(())
            }
        }
        CliCommand::Peer {
            command: PeerCommand::Add { multiaddr },
        } => {
            let added: PeerAdded =
                ApiClient::for_home(&home)?.post("/v1/peers", &AddPeer { addr: multiaddr })?;
            if added.added {
                println!("added static peer {}", added.addr);
            } else {
                println!("{} was already a static peer; dialling it", added.addr);
            }
            Ok(())
        }
    }
}

fn run_daemon(home: Home, no_mdns: bool) -> Result<()> {
    init_logging();
    home.ensure_initialised()?;
    let mut config = Config::load(&home.config_path())?;
    if no_mdns {
        config.mdns = false;
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        meshsync::daemon::run(home, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("meshsync=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_status(status: &Status) {
    println!("peer id:  {}", status.peer_id);
    println!("version:  {}", status.version);
    println!("api:      http://{}", status.api);
    println!("mdns:     {}", if status.mdns { "on" } else { "off" });
    println!("listening on:");
    for addr in &status.listen_addrs {
        println!("  {addr}");
    }
    println!("peers ({} connected):", status.peers.len());
    print_peers(&status.peers);
}

fn print_peers(peers: &[PeerStatus]) {
    for peer in peers {
        let rtt = peer
            .rtt_ms
            .map(|ms| format!("{ms:.1} ms"))
            .unwrap_or_else(|| "-".into());
        let found = serde_json::to_value(peer.found_by)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "  {}  {:<9} rtt {:<9} {}",
            peer.peer_id,
            found,
            rtt,
            peer.addrs.join(", ")
        );
    }
}
