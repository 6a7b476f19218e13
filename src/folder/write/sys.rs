//! The few system calls the writer needs beyond `std`, through `rustix` (safe, typed bindings
//! instead of raw `libc` calls with hand-built C strings and `errno` reads): `flock`,
//! `fallocate`, `renameat2(RENAME_NOREPLACE)`, `utimensat(AT_SYMLINK_NOFOLLOW)`, and the open
//! flags `std` has no name for. `sync_file_range` is the one exception (see
//! [`start_writeback`]).

use std::fs::{self, File};
use std::io;
use std::path::Path;

use rustix::fs::{
    AtFlags, CWD, FlockOperation, OFlags, RenameFlags, Timespec, Timestamps, UTIME_OMIT,
};
use rustix::io::Errno;

/// `O_NOFOLLOW`, for `OpenOptionsExt::custom_flags`: open the path itself, never a symlink's
/// target (`ELOOP` instead).
pub(crate) const O_NOFOLLOW: i32 = OFlags::NOFOLLOW.bits() as i32;

/// `O_NONBLOCK`, for `OpenOptionsExt::custom_flags`: opening a FIFO swapped in does not block.
pub(crate) const O_NONBLOCK: i32 = OFlags::NONBLOCK.bits() as i32;

/// `O_DIRECTORY`, for `OpenOptionsExt::custom_flags`: fail unless the path is a directory.
pub(crate) const O_DIRECTORY: i32 = OFlags::DIRECTORY.bits() as i32;

/// Whether `e` is the OS error `errno`.
pub(crate) fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

/// Takes an exclusive `flock` without waiting; `false` if someone else holds it.
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reserves `size` bytes for the file (and sets its length). Falls back to a sparse `set_len`
/// on file systems without `fallocate`, where a full disk then shows up at write time instead.
pub(crate) fn allocate(file: &File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    // `fallocate` takes an `off_t`: refuse what it cannot hold rather than let it wrap.
    i64::try_from(size).map_err(io::Error::other)?;
    #[cfg(target_os = "linux")]
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => return Ok(()),
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {}
        Err(e) => return Err(e.into()),
    }
    if file.metadata()?.len() < size {
        file.set_len(size)?;
    }
    Ok(())
}

/// Renames without ever replacing an existing `to` (`AlreadyExists` if there is one):
/// `renameat2(RENAME_NOREPLACE)`, or on file systems without it, `link` + `unlink` (for files and
/// symlinks), which fail the same way.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => return Ok(()),
        Err(Errno::INVAL | Errno::NOSYS) => {}
        Err(e) => return Err(e.into()),
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// Sets a path's mtime without following a symlink there (atime is left alone).
pub(crate) fn set_mtime_nofollow(path: &Path, (secs, nanos): (i64, u32)) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: secs,
            tv_nsec: nanos.into(),
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
}

/// Starts writing back what `file` holds so that the fsync at commit has little left to do.
/// Advisory: its errors show up again, and are reported, at that fsync.
///
/// Through `libc`: rustix (1.1) has no `sync_file_range`.
pub(crate) fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open for the call; no memory is
    // involved.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Sets the extended attribute `name` of `file` to `value`.
pub(crate) fn set_attribute(file: &File, name: &str, value: &[u8]) -> io::Result<()> {
    rustix::fs::fsetxattr(file, name, value, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

/// Largest list of attribute names, and largest attribute value, Linux keeps
/// (`XATTR_LIST_MAX`, `XATTR_SIZE_MAX`).
const XATTR_MAX: usize = 64 * 1024;

/// Copies the `user.` extended attributes of `from` to `to` (the others belong to the system:
/// its labels are given to a new file by the kernel). A file system without extended attributes
/// has none to copy.
pub(crate) fn copy_attributes(from: &File, to: &File) -> io::Result<()> {
    let mut names = vec![0u8; XATTR_MAX];
    let len = match rustix::fs::flistxattr(from, &mut names[..]) {
        Ok(len) => len,
        Err(Errno::OPNOTSUPP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut value = vec![0u8; XATTR_MAX];
    for name in names[..len].split(|b| *b == 0) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let name = std::ffi::CStr::from_bytes_with_nul(&[name, &[0]].concat())
            .map_err(io::Error::other)?
            .to_owned();
        let len = match rustix::fs::fgetxattr(from, name.as_c_str(), &mut value[..]) {
            Ok(len) => len,
            // Removed meanwhile.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        rustix::fs::fsetxattr(
            to,
            name.as_c_str(),
            &value[..len],
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    Ok(())
}

/// The extended attribute `name` of `path` itself (a symlink is not followed), if it has one
/// of at most `max` bytes. A file system without extended attributes has none.
pub(crate) fn attribute(path: &Path, name: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(len) => {
            buf.truncate(len);
            Ok(Some(buf))
        }
        Err(Errno::NODATA | Errno::OPNOTSUPP | Errno::RANGE) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How full the file system holding a folder is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskSpace {
    /// Bytes available to us.
    pub available: u64,
    /// The file system's size in bytes.
    pub total: u64,
    /// Files (inodes) that can still be created, where the file system counts them (ext4 and
    /// tmpfs do; btrfs says 0 of 0, and then this is `None`). A tree of many small files runs
    /// out of these with bytes to spare.
    pub free_files: Option<u64>,
}

/// How full the file system holding `path` is.
pub(crate) fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let stat = rustix::fs::statvfs(path)?;
    let unit = stat.f_frsize.max(1);
    Ok(DiskSpace {
        available: stat.f_bavail.saturating_mul(unit),
        total: stat.f_blocks.saturating_mul(unit),
        free_files: (stat.f_files > 0).then_some(stat.f_favail),
    })
}
