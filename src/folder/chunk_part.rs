//! A chunk fetched in parts from one member ([`Request::GetChunkPart`]): what has arrived of
//! it, which answer is its next part, and when it is whole.
//!
//! Parts come from one member only: a part from another starts the chunk over, so a chunk that
//! fails its hash once whole is one member's doing (and its strike). What arrived is kept
//! across that member's failed requests, so a slow link that loses a request loses one part,
//! not the chunk. Pure state; the fetcher ([`super::fetch`]) asks and checks.
//!
//! [`Request::GetChunkPart`]: crate::net::protocol::Request::GetChunkPart

use libp2p::PeerId;

/// The start of a chunk, as far as it arrived in parts from [`Part::member`].
#[derive(Debug)]
pub struct Part {
    from: PeerId,
    bytes: Vec<u8>,
}

/// What an answer made of a chunk's parts.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// It was not the next part from that member (another member's parts started the chunk
    /// over in between): dropped.
    Stale,
    /// The chunk is not whole yet: its next part is to be asked for.
    More,
    /// The chunk is whole: its bytes, to be checked against its hash.
    Whole(Vec<u8>),
}

impl Part {
    /// The parts of a chunk to be asked of `member`: those that arrived from it are kept,
    /// another member's are dropped and the chunk starts over.
    pub fn for_member(part: &mut Option<Part>, member: PeerId) -> &mut Part {
        if part.as_ref().is_some_and(|p| p.from != member) {
            *part = None;
        }
        part.get_or_insert_with(|| Part {
            from: member,
            bytes: Vec::new(),
        })
    }

    /// The member the parts come from.
    pub fn member(&self) -> PeerId {
        self.from
    }

    /// Where the next part starts: the bytes arrived so far.
    pub fn offset(&self) -> u32 {
        self.bytes.len() as u32
    }

    /// Whether an answer of `answered` bytes to a request for `len` bytes from `offset` of a
    /// chunk of `chunk_len` bytes is a part: a full one, or the chunk's last (shorter) one.
    pub fn is_a_part(answered: usize, offset: u32, len: u32, chunk_len: u32) -> bool {
        answered > 0
            && answered <= len as usize
            && (answered == len as usize || offset as usize + answered == chunk_len as usize)
    }

    /// Adds `bytes` that `member` sent from `offset` of a chunk of `chunk_len` bytes; `part`
    /// is emptied once the chunk is whole.
    pub fn add(
        part: &mut Option<Part>,
        member: PeerId,
        offset: u32,
        bytes: &[u8],
        chunk_len: u32,
    ) -> Added {
        let so_far = part.get_or_insert_with(|| Part {
            from: member,
            bytes: Vec::new(),
        });
        if so_far.from != member || so_far.bytes.len() != offset as usize {
            return Added::Stale;
        }
        so_far.bytes.extend_from_slice(bytes);
        if so_far.bytes.len() < chunk_len as usize {
            return Added::More;
        }
        Added::Whole(part.take().map(|p| p.bytes).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_from_one_member_make_the_chunk_in_order() {
        let member = PeerId::random();
        let mut part = None;
        assert_eq!(Part::for_member(&mut part, member).offset(), 0);
        assert_eq!(Part::add(&mut part, member, 0, &[1, 2], 5), Added::More);
        assert_eq!(Part::for_member(&mut part, member).offset(), 2);
        assert_eq!(
            Part::add(&mut part, member, 0, &[1, 2], 5),
            Added::Stale,
            "a part arriving twice is not added twice"
        );
        assert_eq!(Part::add(&mut part, member, 2, &[3, 4], 5), Added::More);
        assert_eq!(
            Part::add(&mut part, member, 4, &[5], 5),
            Added::Whole(vec![1, 2, 3, 4, 5])
        );
        assert!(part.is_none(), "a whole chunk leaves nothing behind");
    }

    #[test]
    fn asking_another_member_starts_the_chunk_over() {
        let (first, second) = (PeerId::random(), PeerId::random());
        let mut part = None;
        Part::for_member(&mut part, first);
        assert_eq!(Part::add(&mut part, first, 0, &[1, 2], 4), Added::More);
        let restarted = Part::for_member(&mut part, second);
        assert_eq!((restarted.member(), restarted.offset()), (second, 0));
        assert_eq!(
            Part::add(&mut part, first, 2, &[3, 4], 4),
            Added::Stale,
            "the first member's late part does not mix in"
        );
        assert_eq!(Part::add(&mut part, second, 0, &[9, 9], 4), Added::More);
    }

    #[test]
    fn an_answer_is_a_part_when_full_or_the_chunks_end() {
        assert!(Part::is_a_part(4, 0, 4, 10), "full");
        assert!(Part::is_a_part(2, 8, 4, 10), "the last, shorter one");
        assert!(!Part::is_a_part(2, 4, 4, 10), "short before the end");
        assert!(!Part::is_a_part(5, 0, 4, 10), "more than asked");
        assert!(!Part::is_a_part(0, 8, 4, 8), "empty");
    }
}
