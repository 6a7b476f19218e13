//! Writes the seed corpus, `fuzz/seeds/<target>/`, from the samples, then runs every seed and
//! every saved regression input (`fuzz/regressions/<target>/`) through its harness.
//!
//! Runs on stable Rust: `cargo run --bin gen_seeds` in `fuzz/` (add `-- --check` to only replay
//! the seeds and regressions without rewriting the seeds).

use std::fs;
use std::path::{Path, PathBuf};

use meshsync::merge::Hlc;
use meshsync_fuzz::samples::{self, cbor, framed};
use meshsync_fuzz::selector;

type Harness = fn(&[u8]);

const TARGETS: [(&str, Harness); 4] = [
    ("wire", meshsync_fuzz::wire),
    ("reconcile", meshsync_fuzz::reconcile),
    ("token", meshsync_fuzz::token),
    ("disk_entry", meshsync_fuzz::disk_entry),
];

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();

    // wire: every message bare and framed, and a stream of frames of each direction.
    let mut request_stream = Vec::new();
    for (name, req) in samples::wire_requests() {
        out.push(("wire", format!("{name}.cbor"), cbor(&req)));
        out.push(("wire", format!("{name}.frame"), framed(&req)));
        request_stream.extend(framed(&req));
    }
    let mut response_stream = Vec::new();
    for (name, res) in samples::wire_responses() {
        out.push(("wire", format!("{name}.cbor"), cbor(&res)));
        out.push(("wire", format!("{name}.frame"), framed(&res)));
        response_stream.extend(framed(&res));
    }
    out.push(("wire", "stream-requests.frames".into(), request_stream));
    out.push(("wire", "stream-responses.frames".into(), response_stream));

    // reconcile: a whole session, then hand-made messages with every answer kind.
    for (i, (req, res)) in samples::session_messages().into_iter().enumerate() {
        out.push((
            "reconcile",
            format!("session-{i}-req.cbor"),
            req.encode().unwrap(),
        ));
        out.push((
            "reconcile",
            format!("session-{i}-res.cbor"),
            res.encode().unwrap(),
        ));
    }
    for (i, res) in samples::reconcile_responses().into_iter().enumerate() {
        out.push(("reconcile", format!("res-{i}.cbor"), res.encode().unwrap()));
    }
    for (i, req) in samples::reconcile_requests().into_iter().enumerate() {
        out.push(("reconcile", format!("req-{i}.cbor"), req.encode().unwrap()));
    }

    // token: as printed, with the white space a paste brings along, and the bare CBOR body.
    for (name, token) in samples::tokens() {
        let text = token.encode();
        out.push(("token", format!("{name}.txt"), text.clone().into_bytes()));
        out.push((
            "token",
            format!("{name}-ws.txt"),
            format!("  {text}\r\n").into_bytes(),
        ));
        // The CBOR body alone, for the harness's second form (prefix + base64 of the input).
        out.push(("token", format!("{name}.cbor"), cbor(&token)));
    }

    // disk_entry: selector byte, then the encoding.
    let with = |sel: u8, bytes: Vec<u8>| [vec![sel], bytes].concat();
    let registers = [
        (
            "register-single",
            samples::register_single(b"value").to_cbor().unwrap(),
        ),
        (
            "register-conflict",
            samples::register_conflict().to_cbor().unwrap(),
        ),
        (
            "register-tombstone",
            samples::register_tombstone().to_cbor().unwrap(),
        ),
        (
            "register-folder",
            samples::register_folder(&samples::file_metas()[1].1)
                .to_cbor()
                .unwrap(),
        ),
    ];
    for (name, bytes) in &registers {
        out.push((
            "disk_entry",
            format!("{name}.bin"),
            with(selector::REGISTER, bytes.clone()),
        ));
    }
    out.push((
        "disk_entry",
        "register-pair.bin".into(),
        with(
            selector::REGISTER,
            [registers[1].1.clone(), registers[2].1.clone()].concat(),
        ),
    ));
    for (name, meta) in samples::file_metas() {
        out.push((
            "disk_entry",
            format!("meta-{name}.bin"),
            with(selector::FILE_META, cbor(&meta)),
        ));
    }
    for (name, page) in samples::pages() {
        out.push((
            "disk_entry",
            format!("{name}.bin"),
            with(selector::PAGE, cbor(&page)),
        ));
    }
    for (name, meta) in samples::share_metas() {
        out.push((
            "disk_entry",
            format!("{name}.bin"),
            with(selector::SHARE_META, cbor(&meta)),
        ));
    }
    out.push((
        "disk_entry",
        "hlc.bin".into(),
        with(selector::HLC, cbor(&Hlc::new(1_760_000_000_000, 3))),
    ));
    out.push((
        "disk_entry",
        "scan-record.bin".into(),
        with(selector::SCAN_RECORD, cbor(&samples::scan_record())),
    ));
    let mut base = meshsync::merge::VersionVector::new();
    base.raise(&meshsync::merge::PeerKey::new(vec![7u8; 38]).unwrap(), 3);
    out.push((
        "disk_entry",
        "synced.bin".into(),
        with(
            selector::SYNCED,
            cbor(&meshsync::folder::Synced {
                record: samples::scan_record(),
                base,
            }),
        ),
    ));
    out
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    files.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"));
    files.sort();
    files
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check_only = std::env::args().any(|a| a == "--check");
    if !check_only {
        let mut total = 0;
        for (target, _) in TARGETS {
            let dir = root.join("seeds").join(target);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
        }
        for (target, name, bytes) in seeds() {
            total += bytes.len();
            fs::write(root.join("seeds").join(target).join(name), bytes).unwrap();
        }
        println!("wrote {total} bytes of seeds");
    }
    for (target, harness) in TARGETS {
        for kind in ["seeds", "regressions"] {
            let files = files_in(&root.join(kind).join(target));
            for file in &files {
                harness(&fs::read(file).unwrap());
            }
            println!("{target}: {} {kind} ran clean", files.len());
        }
    }
}
