//! The `meshsync` command: the daemon (`run`), the commands that need no daemon (`init`, `id`),
//! and thin clients of the control API for everything else.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use meshsync::api::folders::{RestoreRequest, ResumeRequest};
use meshsync::api::records::{
    CreateShare, JoinShare, JsonValue, KeyOnly, ListedRecord, RecordInput, RecordView,
};
use meshsync::api::text;
use meshsync::api::{AddPeer, BlockPeer, PeerAdded, PeerRemoved, RemovePeer, Status, UnblockPeer};
use meshsync::client::ApiClient;
use meshsync::config::Config;
use meshsync::engine::{CreatedShare, ShareStatus, TrustChange};
use meshsync::home::{Home, InitOptions, InitOutcome};
use meshsync::net::PeerStatus;
use meshsync::store::{ShareKind, StoreUsage};

mod cli;

use cli::{Cli, CliCommand, KvCommand, LabCommand, PeerCommand, PskCommand, ShareCommand};

/// jemalloc, not glibc's malloc. The daemon frees on one thread what another allocated (the
/// store's thread, the runtime's workers, the writers of small files), and glibc kept those frees
/// in its arenas: in the middle of a first sync of 10^6 files the receiver had 131 MB from the
/// system and 50 MB in use (`malloc_stats`), and a `malloc_trim` every 20 s did not bring its
/// RSS down for long. With jemalloc (same run, `scripts/bench_scale.py --files 1000000`) the
/// receiver held ~100 MiB through the sync instead of ~140, the sync took 299 s instead of
/// 364–389, and its CPU per file fell from 0.40–0.43 ms to 0.33.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: background threads return freed pages to the system
/// about a second after they are freed (`dirty_decay_ms`), with nothing kept in between
/// (`muzzy_decay_ms`), even while the daemon is idle, which `malloc_trim` after each busy period
/// did before.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: Option<&'static libc::c_char> =
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() });

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let CliCommand::Lab { command } = cli.command {
        return run_lab(command);
    }
    if !matches!(cli.command, CliCommand::Run { .. }) {
        die_quietly_on_a_closed_pipe();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshsync: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `meshsync status | head` made `println!` panic once `head` had
/// read enough. A command that prints restores the default: the process ends quietly, like
/// every other Unix tool. (The daemon keeps ignoring it: a peer closing a socket is no reason to
/// die.)
fn die_quietly_on_a_closed_pipe() {
    // SAFETY: setting a signal's disposition to the default, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
            name,
        } => run_init(
            &home,
            &InitOptions {
                listen,
                api,
                peers,
                no_mdns,
                name,
            },
        ),
        CliCommand::Psk { command } => run_psk(command),
        CliCommand::Lab { .. } => unreachable!("run by main"),
        CliCommand::Open => {
            let client = ApiClient::for_home(&home)?;
            // Checks that the daemon answers, so the link is not dead on arrival.
            let _: serde_json::Value = client.get("/health")?;
            println!("{}", client.page_link());
            Ok(())
        }
        CliCommand::Id => {
            println!("{}", home.load_identity()?.public().to_peer_id());
            Ok(())
        }
        CliCommand::Run { no_mdns } => run_daemon(home, no_mdns),
        CliCommand::Status {
            json,
            watch,
            interval,
        } => {
            if watch {
                run_watch(&home, interval)
            } else {
                run_status(&home, json)
            }
        }
        CliCommand::Peers { json } => run_peers(&home, json),
        CliCommand::Store { json } => run_store(&home, json),
        CliCommand::Share { command } => run_share(&home, command),
        CliCommand::Kv { command } => run_kv(&home, command),
        CliCommand::Events { json, share, since } => run_events(&home, json, share, since),
        CliCommand::Peer { command } => run_peer(&home, command),
    }
}

/// `init`: creates the home, or says it already exists; prints the peer id either way.
fn run_init(home: &Home, options: &InitOptions) -> Result<()> {
    match home.init(options)? {
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

/// `psk new`: writes a fresh key file, never over an existing one; prints its fingerprint.
fn run_psk(command: PskCommand) -> Result<()> {
    let PskCommand::New { file } = command;
    if file.exists() {
        anyhow::bail!("{} already exists; not overwriting a key", file.display());
    }
    let psk = meshsync::net::transport::new_psk();
    meshsync::home::write_atomically(&file, psk.to_key_file().as_bytes(), Some(0o600))
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!(
        "wrote a new pre-shared key to {}; copy it to every peer of the private mesh",
        file.display()
    );
    println!("{}", psk.fingerprint());
    Ok(())
}

/// `status`.
fn run_status(home: &Home, json: bool) -> Result<()> {
    let status: Status = ApiClient::for_home(home)?.get("/v1/status")?;
    if json {
        print_json(&status)
    } else {
        print!("{}", text::status(&status));
        Ok(())
    }
}

/// `lab run`: exit code 0 passed, 1 an invariant failed, 2 could not run, 130 interrupted.
fn run_lab(command: LabCommand) -> ExitCode {
    use meshsync::lab::{self, LabError, scenario::Scenario};
    let LabCommand::Run {
        scenario,
        json,
        seed,
        dir,
        keep,
    } = command;
    let fail = |code: u8, message: String| {
        eprintln!("meshsync lab: {message}");
        ExitCode::from(code)
    };
    let text = match std::fs::read_to_string(&scenario) {
        Ok(text) => text,
        Err(e) => return fail(2, format!("cannot read {}: {e}", scenario.display())),
    };
    let parsed = match Scenario::parse(&text) {
        Ok(parsed) => parsed,
        Err(e) => return fail(2, format!("{}: {e}", scenario.display())),
    };
    // Ctrl-C ends the run cleanly: the lab stops its daemons and removes what it made.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            return fail(2, format!("cannot handle signals: {e}"));
        }
    }
    let seed = seed.unwrap_or(parsed.seed);
    let dir = dir.unwrap_or_else(lab::fresh_dir);
    match lab::run(&parsed, seed, &dir, keep, &stop) {
        Ok(report) => {
            print!("{}", report.text());
            if let Some(path) = json {
                let written = serde_json::to_vec_pretty(&report)
                    .map_err(std::io::Error::other)
                    .and_then(|bytes| std::fs::write(&path, bytes));
                if let Err(e) = written {
                    return fail(2, format!("cannot write {}: {e}", path.display()));
                }
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(LabError::Interrupted) => fail(
            130,
            "interrupted; everything it started is stopped and removed".into(),
        ),
        Err(e) => fail(2, e.to_string()),
    }
}

/// `status --watch`.
fn run_watch(home: &Home, interval: f64) -> Result<()> {
    if !(0.1..=3600.0).contains(&interval) {
        bail!("--interval must be between 0.1 and 3600 seconds, not {interval}");
    }
    let client = ApiClient::for_home(home)?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    meshsync::api::watch::run(
        || Ok(client.get("/v1/status")?),
        Duration::from_secs_f64(interval),
        terminal,
    )
}

/// `peers`.
fn run_peers(home: &Home, json: bool) -> Result<()> {
    let peers: Vec<PeerStatus> = ApiClient::for_home(home)?.get("/v1/peers")?;
    if json {
        print_json(&peers)
    } else {
        print!("{}", text::peers(&peers));
        Ok(())
    }
}

fn run_store(home: &Home, json: bool) -> Result<()> {
    let usage: StoreUsage = ApiClient::for_home(home)?.get("/v1/store")?;
    if json {
        print_json(&usage)
    } else {
        print!("{}", text::store_usage(&usage));
        Ok(())
    }
}

/// `peer add`, `peer block` and `peer unblock`.
fn run_peer(home: &Home, command: PeerCommand) -> Result<()> {
    let client = ApiClient::for_home(home)?;
    match command {
        PeerCommand::Block { peer_id } => {
            let answer: BlockPeer = client.post(
                "/v1/peers/block",
                &BlockPeer {
                    peer_id,
                    blocked: false,
                },
            )?;
            if answer.blocked {
                println!("blocked {}", answer.peer_id);
            } else {
                println!("{} was already blocked", answer.peer_id);
            }
        }
        PeerCommand::Remove { peer } => {
            let answer: PeerRemoved = client.post("/v1/peers/remove", &RemovePeer { peer })?;
            for addr in answer.removed {
                println!("removed {addr}");
            }
        }
        PeerCommand::Unblock { peer_id } => {
            let answer: UnblockPeer = client.post(
                "/v1/peers/unblock",
                &UnblockPeer {
                    peer_id,
                    unblocked: false,
                },
            )?;
            if answer.unblocked {
                println!("unblocked {}", answer.peer_id);
            } else {
                println!("{} was not blocked", answer.peer_id);
            }
        }
        PeerCommand::Add { multiaddr, no_wait } => {
            let added: PeerAdded = client.post("/v1/peers", &AddPeer { addr: multiaddr })?;
            if added.added {
                println!("added static peer {}", added.addr);
            } else {
                println!("{} was already a static peer; dialling it", added.addr);
            }
            if !no_wait {
                wait_for_answer(&client, &added.addr)?;
            }
        }
    }
    Ok(())
}

/// How long `peer add` waits for the new peer to answer.
const PEER_ADD_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits until the static peer at `addr` is connected (and says so) or its dial failed (an
/// error, so that a wrong address is not met with silence; it stays configured).
fn wait_for_answer(client: &ApiClient, addr: &str) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let status: Status = client.get("/v1/status")?;
        let target = status.static_peer_status.iter().find(|p| p.addr == addr);
        match target {
            Some(peer) if peer.connected => {
                let id = addr.rsplit("/p2p/").next().filter(|id| *id != addr);
                println!(
                    "connected{}",
                    id.map(|id| format!(" to {id}")).unwrap_or_default()
                );
                return Ok(());
            }
            Some(peer) if peer.failed_dials > 0 => anyhow::bail!(
                "{addr} did not answer ({}); it stays configured and is dialled again with                  backoff (`meshsync peer remove {addr}` forgets it)",
                peer.last_error.as_deref().unwrap_or("no reason given")
            ),
            _ if started.elapsed() > PEER_ADD_WAIT => anyhow::bail!(
                "{addr} did not answer within {} s; it stays configured and is dialled again",
                PEER_ADD_WAIT.as_secs()
            ),
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

fn run_share(home: &Home, command: ShareCommand) -> Result<()> {
    let client = ApiClient::for_home(home)?;
    match command {
        ShareCommand::Create { what, name } => {
            let (kind, name, path) = what.resolve(name)?;
            let created: CreatedShare =
                client.post("/v1/shares", &CreateShare { name, kind, path })?;
            let flag = match kind {
                ShareKind::Records => "--records NAME",
                ShareKind::Folder => "--folder PATH",
            };
            eprintln!(
                "created {} share `{}` ({})",
                text::kind_name(kind),
                created.name,
                created.id
            );
            eprintln!("join it on another machine with: meshsync share join <token> {flag}");
            println!("{}", created.token.unwrap_or_default());
        }
        ShareCommand::Join { token, what, name } => {
            let (kind, name, path) = what.resolve(name)?;
            let joined: CreatedShare = client.post(
                "/v1/shares/join",
                &JoinShare {
                    token,
                    name,
                    kind,
                    path,
                },
            )?;
            println!(
                "joined {} share `{}` ({})",
                text::kind_name(kind),
                joined.name,
                joined.id
            );
        }
        ShareCommand::List { json } => {
            let shares: Vec<ShareStatus> = client.get("/v1/shares")?;
            if json {
                return print_json(&shares);
            }
            print!("{}", text::shares(&shares));
        }
        ShareCommand::Token { share, read_only } => {
            let answer: serde_json::Value = client.get(&format!(
                "/v1/shares/{}/token{}",
                path_segment(&share),
                if read_only { "?read_only=true" } else { "" }
            ))?;
            println!("{}", answer["token"].as_str().unwrap_or_default());
        }
        ShareCommand::Trust { share, peers } => {
            let change = TrustChange {
                add: peers,
                remove: Vec::new(),
            };
            print_trusted(&client, &share, &change)?;
        }
        ShareCommand::Untrust { share, peers } => {
            let change = TrustChange {
                add: Vec::new(),
                remove: peers,
            };
            print_trusted(&client, &share, &change)?;
        }
        ShareCommand::Versions { share, path, json } => {
            let query = path
                .map(|p| format!("?path={}", url_encode(&p)))
                .unwrap_or_default();
            let versions: Vec<serde_json::Value> = client.get(&format!(
                "/v1/shares/{}/versions{query}",
                path_segment(&share)
            ))?;
            if json {
                return print_json(&versions);
            }
            for v in &versions {
                println!(
                    "{}  {:>12} B  {}",
                    v["at"].as_str().unwrap_or_default(),
                    v["size"].as_u64().unwrap_or(0),
                    v["path"].as_str().unwrap_or_default()
                );
            }
        }
        ShareCommand::Restore { share, path, at } => {
            let restored: serde_json::Value = client.post(
                &format!("/v1/shares/{}/restore", path_segment(&share)),
                &RestoreRequest { path, at },
            )?;
            println!(
                "restored `{}` as it was at {}",
                restored["path"].as_str().unwrap_or_default(),
                restored["at"].as_str().unwrap_or_default()
            );
        }
        ShareCommand::Pause { share } => {
            let answer: serde_json::Value = client.post(
                &format!("/v1/shares/{}/pause", path_segment(&share)),
                &serde_json::json!({}),
            )?;
            if answer["changed"] == true {
                println!("share `{share}` paused; `meshsync share resume {share}` resumes it");
            } else {
                println!("share `{share}` was already paused");
            }
        }
        ShareCommand::Leave { share } => {
            let answer: serde_json::Value = client.post(
                &format!("/v1/shares/{}/leave", path_segment(&share)),
                &serde_json::json!({}),
            )?;
            let name = answer["share"].as_str().unwrap_or(&share);
            println!("left share `{name}`; its files stay where they are");
        }
        ShareCommand::Resume {
            share,
            accept_deletes,
            restore,
        } => {
            let request = ResumeRequest {
                accept_deletes,
                restore,
            };
            let answer: serde_json::Value = client.post(
                &format!("/v1/shares/{}/resume", path_segment(&share)),
                &request,
            )?;
            let paths = answer["paths"].as_u64().unwrap_or(0);
            if !accept_deletes && !restore {
                if answer["changed"] == true {
                    println!("share `{share}` resumed");
                } else {
                    println!("share `{share}` was not paused");
                }
            } else if accept_deletes {
                println!("share `{share}` resumed: sending {paths} deletes");
            } else {
                println!("share `{share}` resumed: fetching {paths} deleted paths back");
            }
        }
    }
    Ok(())
}

fn print_trusted(client: &ApiClient, share: &str, change: &TrustChange) -> Result<()> {
    let answer: serde_json::Value =
        client.post(&format!("/v1/shares/{}/trust", path_segment(share)), change)?;
    let trusted: Vec<&str> = answer["trusted_peers"]
        .as_array()
        .map(|peers| peers.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    if trusted.is_empty() {
        println!("share `{share}` admits any peer holding a token");
    } else {
        println!("share `{share}` admits only: {}", trusted.join(" "));
    }
    Ok(())
}

fn path_segment(text: &str) -> String {
    url_encode(text)
}

/// Bytes left as they are in a path segment: RFC 3986's unreserved characters (ASCII letters,
/// digits, `-`, `.`, `_`, `~`). Every other byte, including each byte of a non-ASCII character,
/// becomes `%XX` with upper-case hex.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn url_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, PATH_SEGMENT).to_string()
}

fn run_kv(home: &Home, command: KvCommand) -> Result<()> {
    let client = ApiClient::for_home(home)?;
    match command {
        KvCommand::Put { share, key, value } => {
            let value = match value.as_deref() {
                Some(value) if value != "-" => JsonValue::of(value.as_bytes()),
                _ => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                        .context("cannot read the value from stdin")?;
                    JsonValue::of(&bytes)
                }
            };
            let record = RecordInput { key, value };
            let _: serde_json::Value =
                client.post(&format!("/v1/kv/{}/put", path_segment(&share)), &record)?;
        }
        KvCommand::Get {
            share,
            key,
            conflicts,
        } => {
            let record: RecordView = client.get(&format!(
                "/v1/kv/{}/get?key={}",
                path_segment(&share),
                url_encode(&key)
            ))?;
            if conflicts {
                return print_json(&record);
            }
            let bytes = record
                .winner
                .value
                .bytes()
                .map_err(|m| anyhow::anyhow!("unexpected answer from the daemon: {m}"))?;
            std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
        }
        KvCommand::Del { share, key } => {
            let _: serde_json::Value = client.post(
                &format!("/v1/kv/{}/del", path_segment(&share)),
                &KeyOnly { key },
            )?;
        }
        KvCommand::List {
            share,
            prefix,
            json,
        } => {
            // Printed as it arrives: a listing can be longer than memory.
            use std::io::Write;
            let path = format!(
                "/v1/kv/{}/list?prefix={}",
                path_segment(&share),
                url_encode(&prefix)
            );
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut count = 0usize;
            client.get_each(&path, |record: ListedRecord| {
                if !json {
                    return writeln!(out, "{}", record.key);
                }
                // The layout `print_json` gives a whole array: elements indented by two.
                let text = serde_json::to_string_pretty(&record).map_err(std::io::Error::other)?;
                out.write_all(if count == 0 { b"[\n" } else { b",\n" })?;
                count += 1;
                for (n, line) in text.lines().enumerate() {
                    if n > 0 {
                        out.write_all(b"\n")?;
                    }
                    write!(out, "  {line}")?;
                }
                Ok(())
            })?;
            if json {
                out.write_all(if count == 0 { b"[]\n" } else { b"\n]\n" })?;
            }
            out.flush()?;
        }
        KvCommand::Watch { share, prefix } => {
            use std::io::Write;
            let stdout = std::io::stdout();
            client.stream_lines(
                &format!(
                    "/v1/kv/{}/watch?prefix={}",
                    path_segment(&share),
                    url_encode(&prefix)
                ),
                |line| {
                    let mut out = stdout.lock();
                    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
                },
            )?;
        }
    }
    Ok(())
}

/// Prints the daemon's events as they come: the SSE stream's `data:` lines, as JSON or as text.
fn run_events(home: &Home, json: bool, share: Option<String>, since: Option<u64>) -> Result<()> {
    use std::io::Write;
    let client = ApiClient::for_home(home)?;
    let mut query = Vec::new();
    if let Some(share) = share {
        query.push(format!("share={}", url_encode(&share)));
    }
    if let Some(since) = since {
        query.push(format!("since={since}"));
    }
    let path = format!("/v1/events?{}", query.join("&"));
    let stdout = std::io::stdout();
    client.stream_lines(&path, |line| {
        let Some(data) = line.strip_prefix("data:") else {
            return true;
        };
        let data = data.trim_start();
        let text = if json {
            data.to_owned()
        } else {
            match serde_json::from_str::<meshsync::events::Event>(data) {
                Ok(event) => event.line(),
                Err(_) => data.to_owned(),
            }
        };
        let mut out = stdout.lock();
        writeln!(out, "{text}").and_then(|_| out.flush()).is_ok()
    })?;
    Ok(())
}

fn run_daemon(home: Home, no_mdns: bool) -> Result<()> {
    init_logging();
    home.ensure_initialised()?;
    let mut config = Config::load(&home.config_path())?;
    if no_mdns {
        config.mdns = false;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(async_workers()?)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        meshsync::daemon::run(home, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// The runtime's worker threads: half the cores, at least one; `TOKIO_WORKER_THREADS` in the
/// environment still wins (anything but a positive number there is an error, as with tokio's
/// own default). The heavy work (hashing, the store, the file system) runs on tokio's
/// blocking threads, not on these; the workers carry the network (Noise, Yamux) and the engine.
/// One per core made them wake each other for every frame of an idle mesh: on 2 cores, one
/// worker took 32 idle daemons from 2.4–2.7 % of a core to 2.0 %, and a 100,000-file sync from
/// 36 s to 31 s (peak RSS 148 → 126 MiB), for about 3 % less records throughput; see README's
/// benchmarks.
fn async_workers() -> Result<usize> {
    if let Some(set) = std::env::var_os("TOKIO_WORKER_THREADS") {
        let text = set.to_string_lossy();
        return match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!(
                "TOKIO_WORKER_THREADS is `{text}`: it must be a positive number of threads (or unset)"
            ),
        };
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok((cores / 2).max(1))
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

/// What is logged without `RUST_LOG`: our info lines, everyone's warnings, except Yamux's
/// per-connection errors (a peer over the stream limit; our own line on the connection's end
/// says what happened, once per peer) and Kademlia's warnings (its automatic bootstrap warns
/// every few minutes while no peer is known, the normal state of a daemon alone on its LAN).
const DEFAULT_LOG_FILTER: &str = "meshsync=info,warn,yamux=off,libp2p_kad=error";

/// Logs to stderr; colours only when stderr is a terminal (a log file or journal gets plain
/// text, not escape codes).
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::url_encode;

    /// The hand-written encoder `url_encode` had before `percent-encoding`.
    fn old_url_encode(text: &str) -> String {
        let mut out = String::new();
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    #[test]
    fn url_encode_is_unchanged() {
        let mut inputs: Vec<String> = [
            "",
            "plain",
            "a/b/c",
            "with space",
            "100%",
            "%2F",
            "a+b=c&d?e#f",
            "-._~",
            "!*'();:@&=+$,/?#[]",
            "\"<>\\^`{|}",
            "tab\there\nnewline\0nul\x7fdel",
            "caf\u{e9} \u{65e5}\u{672c} \u{1f600}",
            "docs/report.txt",
            "..",
            ".",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        inputs.push((0u8..128).map(char::from).collect());
        inputs.push((128u32..600).filter_map(char::from_u32).collect());
        for text in inputs {
            assert_eq!(url_encode(&text), old_url_encode(&text), "{text:?}");
        }
    }
}
