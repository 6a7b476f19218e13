//! How far each member has got with each share, as `status` shows it (`member_status[]`
//! `completion`, `needed_files`, `needed_bytes`).
//!
//! Members tell each other their own progress ([`crate::net::protocol::Request::Progress`]):
//! their summary root and what they know they still have to fetch. That alone cannot see
//! entries a member has not heard of yet, so a session's count of entries we offered the member
//! (that it lacked) is added until the member reports again after it. Pure state with no I/O or
//! clock reads: callers pass `now`.

use std::collections::HashMap;

use libp2p::PeerId;
use tokio::time::Instant;

use crate::store::ShareId;

/// A member and a share.
pub type Pair = (PeerId, ShareId);

/// One side's progress with a share, as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Its summary root.
    pub root: [u8; 32],
    /// Files it knows of and has not yet written (0 for records shares).
    pub files: u64,
    /// Bytes it still has to fetch for them.
    pub bytes: u64,
}

/// What a member still needs of our view of a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberNeeds {
    /// Files (or records) it lacks.
    pub files: u64,
    /// Bytes of content it lacks (of entries it has heard of).
    pub bytes: u64,
}

/// Progress heard from members, offers made to them, and what we last told each.
#[derive(Debug, Default)]
pub struct ProgressBook {
    /// Each member's latest report, with when it arrived.
    reported: HashMap<Pair, (Progress, Instant)>,
    /// Entries our latest session with the member found it lacked, with when the session ended.
    offered: HashMap<Pair, (u64, Instant)>,
    /// What we last sent each member about each share.
    sent: HashMap<Pair, Progress>,
    /// Our own progress with each share, as the state poll last gave it.
    ours: HashMap<ShareId, Progress>,
}

impl ProgressBook {
    /// A member's report arrived.
    pub fn reported(&mut self, pair: Pair, progress: Progress, now: Instant) {
        self.reported.insert(pair, (progress, now));
    }

    /// A session with the member ended; it lacked `offer` of our entries.
    pub fn session_ended(&mut self, pair: Pair, offer: u64, now: Instant) {
        self.offered.insert(pair, (offer, now));
    }

    /// Our progress with `share` is now `ours`.
    pub fn own(&mut self, share: ShareId, ours: Progress) {
        self.ours.insert(share, ours);
    }

    /// Our latest progress with `share`, and the members (of `members`) that have not been told
    /// it yet: they count as told from now on. Nothing before the state poll gave our progress.
    pub fn to_tell(
        &mut self,
        share: ShareId,
        members: &[PeerId],
    ) -> Option<(Progress, Vec<PeerId>)> {
        let ours = *self.ours.get(&share)?;
        let untold = members
            .iter()
            .filter(|peer| {
                let told = self.sent.insert((**peer, share), ours);
                told != Some(ours)
            })
            .copied()
            .collect();
        Some((ours, untold))
    }

    /// Telling the member failed: it is told again when our progress is next given (at the
    /// latest [`super::share_events::PROGRESS_REFRESH`] later), or when it connects again.
    pub fn untold(&mut self, pair: &Pair) {
        self.sent.remove(pair);
    }

    /// What the member still needs of our view of the share whose root is `our_root`; `None`
    /// until it has reported.
    pub fn needs(&self, pair: &Pair, our_root: [u8; 32]) -> Option<MemberNeeds> {
        let (progress, at) = self.reported.get(pair)?;
        let mut needs = MemberNeeds {
            files: progress.files,
            bytes: progress.bytes,
        };
        if progress.root != our_root
            && let Some((offer, offered_at)) = self.offered.get(pair)
            && offered_at >= at
        {
            // The member had not heard of these when it last reported.
            needs.files = needs.files.saturating_add(*offer);
        }
        Some(needs)
    }

    /// The peer disconnected: it must be told again when it comes back. What it reported stays
    /// (status shows a gone member's last known progress) until [`ProgressBook::retain`].
    pub fn disconnected(&mut self, peer: &PeerId) {
        self.sent.retain(|(p, _), _| p != peer);
    }

    /// Forgets every pair `keep` says no to (members no longer listed anywhere).
    pub fn retain(&mut self, mut keep: impl FnMut(&Pair) -> bool) {
        self.reported.retain(|pair, _| keep(pair));
        self.offered.retain(|pair, _| keep(pair));
        self.sent.retain(|pair, _| keep(pair));
    }

    /// Forgets everything about `share` (it was left or paused).
    pub fn forget_share(&mut self, share: &ShareId) {
        self.retain(|(_, s)| s != share);
        self.ours.remove(share);
    }
}

/// Percent (0 to 100, one decimal, rounded down) of our view a member holding all but `needs`
/// has, weighing by bytes where the share has file content and by entries otherwise. It is 100
/// only when nothing is needed.
pub fn completion(needs: MemberNeeds, total_files: u64, total_bytes: u64) -> f64 {
    if needs.files == 0 && needs.bytes == 0 {
        return 100.0;
    }
    let (need, total) = if total_bytes > 0 {
        (needs.bytes, total_bytes)
    } else {
        (needs.files, total_files)
    };
    let total = total.max(need).max(1);
    let held = (total - need) as f64 / total as f64;
    let percent = (held * 1000.0).floor() / 10.0;
    percent.min(99.9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pair {
        (PeerId::random(), [7; 32])
    }

    fn progress(root: u8, files: u64, bytes: u64) -> Progress {
        Progress {
            root: [root; 32],
            files,
            bytes,
        }
    }

    #[test]
    fn nothing_is_known_until_the_member_reports() {
        let book = ProgressBook::default();
        assert_eq!(book.needs(&pair(), [1; 32]), None);
    }

    #[test]
    fn a_member_on_our_root_needs_what_it_says() {
        let mut book = ProgressBook::default();
        let p = pair();
        let now = Instant::now();
        book.session_ended(p, 5, now);
        book.reported(p, progress(1, 3, 300), now);
        let needs = book.needs(&p, [1; 32]).unwrap();
        assert_eq!(
            needs,
            MemberNeeds {
                files: 3,
                bytes: 300
            }
        );
    }

    #[test]
    fn entries_offered_after_its_report_count_until_it_reports_again() {
        let mut book = ProgressBook::default();
        let p = pair();
        let t0 = Instant::now();
        book.reported(p, progress(2, 0, 0), t0);
        book.session_ended(p, 4, t0 + std::time::Duration::from_millis(1));
        assert_eq!(book.needs(&p, [1; 32]).unwrap().files, 4);
        book.reported(
            p,
            progress(1, 4, 4096),
            t0 + std::time::Duration::from_millis(2),
        );
        let needs = book.needs(&p, [1; 32]).unwrap();
        assert_eq!(
            needs,
            MemberNeeds {
                files: 4,
                bytes: 4096
            }
        );
    }

    #[test]
    fn each_member_is_told_each_change_once_and_again_after_reconnecting() {
        let mut book = ProgressBook::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let share = [9; 32];
        let tell = |book: &mut ProgressBook, members: &[PeerId]| {
            book.to_tell(share, members).map(|(_, untold)| untold)
        };
        assert_eq!(tell(&mut book, &[a, b]), None, "nothing to tell yet");
        book.own(share, progress(1, 0, 0));
        assert_eq!(tell(&mut book, &[a, b]).unwrap().len(), 2);
        assert_eq!(tell(&mut book, &[a, b]), Some(vec![]));
        book.own(share, progress(1, 1, 10));
        assert_eq!(tell(&mut book, &[a]), Some(vec![a]));
        book.disconnected(&b);
        assert_eq!(tell(&mut book, &[a, b]), Some(vec![b]));
        book.forget_share(&share);
        assert_eq!(tell(&mut book, &[a, b]), None, "forgotten with its share");
    }

    #[test]
    fn completion_is_100_only_when_nothing_is_needed() {
        let none = MemberNeeds { files: 0, bytes: 0 };
        assert_eq!(completion(none, 0, 0), 100.0);
        let one = MemberNeeds { files: 1, bytes: 1 };
        assert_eq!(completion(one, 1_000_000, 1_000_000_000), 99.9);
        let half = MemberNeeds {
            files: 1,
            bytes: 500,
        };
        assert_eq!(completion(half, 2, 1000), 50.0);
        // Records: by entries.
        let records = MemberNeeds {
            files: 25,
            bytes: 0,
        };
        assert_eq!(completion(records, 100, 0), 75.0);
        // More needed than we hold (it lacks what we are fetching too): 0, not negative.
        assert_eq!(completion(MemberNeeds { files: 9, bytes: 9 }, 1, 1), 0.0);
    }
}
