//! Small disks for `disk-full` faults: a tmpfs of a given size mounted at a peer's folders
//! directory, filled up with one file outside every share and freed again. Unmounted when
//! dropped (lazily, so a daemon still holding a file there cannot keep it mounted), which the
//! lab does after its daemons stopped, also when interrupted.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file that fills a disk; in the folders directory itself, so in no share.
const FILLER: &str = ".lab-filler";

/// A mounted small disk.
#[derive(Debug)]
pub struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` at `at` (created, and empty: nothing is hidden under it).
    pub fn mount(at: &Path, bytes: u64) -> Result<SmallDisk, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("a small disk needs root (it is a tmpfs mount)".into());
        }
        std::fs::create_dir_all(at).map_err(|e| format!("create {}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0755"))
            .arg("tmpfs")
            .arg(at)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount a tmpfs at {}: {}",
                at.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk { at: at.to_owned() })
    }

    /// Takes every free byte (but less than a page): one file grown until the disk is full.
    pub fn fill(&self) -> Result<(), String> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(self.at.join(FILLER))
            .map_err(|e| format!("filler: {e}"))?;
        let mut end = file.metadata().map_err(|e| format!("filler: {e}"))?.len();
        // tmpfs allocates on fallocate: the space is taken at once, not when written.
        for step in [1u64 << 20, 4096] {
            loop {
                match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), end, step) {
                    Ok(()) => end += step,
                    Err(rustix::io::Errno::NOSPC) => break,
                    Err(e) => return Err(format!("fill {}: {e}", self.at.display())),
                }
            }
        }
        Ok(())
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn drain(&self) -> Result<(), String> {
        match std::fs::remove_file(self.at.join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("free {}: {e}", self.at.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).output();
    }
}
