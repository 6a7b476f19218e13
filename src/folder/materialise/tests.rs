use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;
use crate::folder::write::testkit::{folder, sample, write_all};

#[test]
fn a_committed_file_is_described_as_it_is_after_its_rename() {
    let root = folder();
    let cut = sample();
    let mut assembly = cut.open(root.path(), "d/big.bin").unwrap();
    let order: Vec<usize> = (0..cut.chunks.len()).collect();
    write_all(&mut assembly, &cut, &order);
    let (kept, stat) = commit_keeping_old(
        root.path(),
        "d/big.bin",
        assembly,
        false,
        Expect::Absent,
        0o640,
        (1_700_000_000, 5),
    )
    .unwrap();
    assert_eq!(kept, None);
    let at_path = fs::symlink_metadata(root.path().join("d/big.bin")).unwrap();
    assert_eq!(stat.ino(), at_path.ino());
    // The rename changed the inode's ctime: a record with the one from before would make the
    // next scan take the file for a local edit and hash it again.
    assert_eq!(
        (stat.ctime(), stat.ctime_nsec()),
        (at_path.ctime(), at_path.ctime_nsec())
    );
    assert_eq!((stat.mtime(), stat.mtime_nsec()), (1_700_000_000, 5));
    assert_eq!(stat.len(), cut.data.len() as u64);
}
