//! The status page in a real headless browser (Debian's `chromium`, driven over the DevTools
//! protocol on a pipe): it loads from the link `meshsync open` prints, shows both shares of a
//! daemon, and a file added on a peer appears in its event list without a reload. Where
//! `chromium` is missing the test prints SKIPPED, unless `MESHSYNC_REQUIRE_BROWSER` is set (as
//! `.ci/run` sets it), where it fails.

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use support::{FolderShare, Node, WAIT, wait_until};

const REQUIRE_ENV: &str = "MESHSYNC_REQUIRE_BROWSER";

/// A headless chromium and one page in it, killed when dropped.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: std::fs::File,
    buffer: Vec<u8>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors `pipe` writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: both were just opened and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts chromium with the DevTools protocol on fds 3 (its input) and 4 (its output), or
    /// `None` where there is no chromium.
    fn start() -> Option<Browser> {
        if Command::new("chromium").arg("--version").output().is_err() {
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{REQUIRE_ENV} is set but chromium cannot run"
            );
            eprintln!("SKIPPED: no chromium to drive the status page with");
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let (their_in, our_out) = pipe();
        let (our_in, their_out) = pipe();
        let (child_in, child_out) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(child_in, 3) < 0 || libc::dup2(child_out, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((their_in, their_out));
        let mut browser = Browser {
            child,
            to: std::fs::File::from(our_out),
            from: std::fs::File::from(our_in),
            buffer: Vec::new(),
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        Some(browser)
    }

    /// Sends a DevTools command (to the page once attached) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        loop {
            while let Some(end) = self.buffer.iter().position(|b| *b == 0) {
                let frame: Vec<u8> = self.buffer.drain(..=end).collect();
                let reply: Value = serde_json::from_slice(&frame[..end]).unwrap();
                if reply["id"] == id {
                    assert!(reply.get("error").is_none(), "{method}: {reply}");
                    return reply["result"].clone();
                }
            }
            let mut chunk = [0; 65536];
            let n = self.from.read(&mut chunk).expect("read from chromium");
            assert!(n > 0, "chromium closed the protocol pipe");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// The text of the element `selector` shows (empty while there is none).
    fn text(&mut self, selector: &str) -> String {
        let expression = format!(
            "(document.querySelector({}) || {{innerText: ''}}).innerText",
            json!(selector)
        );
        let result = self.call("Runtime.evaluate", json!({"expression": expression}));
        result["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn navigations(&mut self) -> u64 {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": "performance.getEntriesByType('navigation').length"}),
        );
        result["result"]["value"].as_u64().unwrap_or(0)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_status_page_shows_the_shares_and_a_peers_new_file_live() {
    let Some(mut browser) = Browser::start() else {
        return;
    };
    let mut a = Node::init(&["--name", "laptop"]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr(), "--name", "desk"]);
    b.start();
    let folder = FolderShare::among(&[&a, &b]);
    let token = a.create_records_share("notes");
    b.join_records_share(&token, "notes");

    // Without the token the page asks for it, and the API refuses it.
    let out = a.cli(&["open"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let bare = link.split('#').next().unwrap().to_owned();
    browser.open(&bare);
    wait_until("the page to ask for the token", WAIT, || {
        browser.text("#login").contains("API token")
    });

    browser.open(&link);
    wait_until("the page to show both shares in sync", WAIT, || {
        let shares = browser.text("#shares");
        shares.contains("folder (folder)")
            && shares.contains("notes (records)")
            && shares.matches("in-sync").count() == 2
            // desk's completion, in both shares
            && shares.matches("100.0 %").count() == 2
    });
    assert!(browser.text("#title").contains("laptop"));
    assert!(browser.text("#peers").contains("desk"));
    let loads = browser.navigations();

    std::fs::write(folder.dirs[1].join("from-desk.txt"), "hello").unwrap();
    wait_until("the new file in the page's event list", WAIT, || {
        let events = browser.text("#events");
        events.contains("file_added") && events.contains("from-desk.txt")
    });
    assert_eq!(browser.navigations(), loads, "no reload");
    // The event names desk by its device name.
    assert!(
        browser.text("#events").contains("by desk"),
        "{}",
        browser.text("#events")
    );

    // desk replaces the file: the copy A had is kept, and the page lists it.
    wait_until("from-desk.txt on A", WAIT, || {
        folder.dirs[0].join("from-desk.txt").exists()
    });
    std::fs::write(folder.dirs[1].join("from-desk.txt"), "hello again").unwrap();
    wait_until("the replaced copy in the page's versions", WAIT, || {
        browser.text("#versions").contains("from-desk.txt")
    });
    // The token never left the tab: it is not in the page's address any more.
    let address = browser.call("Runtime.evaluate", json!({"expression": "location.href"}));
    assert!(!address.to_string().contains("token"), "{address}");
}
