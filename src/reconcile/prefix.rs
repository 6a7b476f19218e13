//! Nibble prefixes of item ids: the names of summary ranges, in memory and on the wire.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Id;
use super::wire::{de_packed, ser_packed};

/// Longest prefix: all 64 nibbles of a 32-byte id (a range of at most one item).
pub const MAX_PREFIX_NIBBLES: usize = 64;

/// The first `len` nibbles (high nibble of each byte first) of an id; names the range of all ids
/// that start with them. The empty prefix names the whole set.
///
/// Unused nibbles are always zero, so `bytes` is also the smallest id in the range and derived
/// equality is value equality. Encoded as a byte string: the nibble count, then the nibbles
/// packed two per byte.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    len: u8,
    bytes: [u8; 32],
}

/// The nibble of `id` at position `i` (< 64).
pub(crate) fn nibble_of(id: &Id, i: usize) -> usize {
    let b = id[i / 2];
    usize::from(if i.is_multiple_of(2) {
        b >> 4
    } else {
        b & 0x0f
    })
}

impl Prefix {
    /// The empty prefix: the range of all ids.
    pub const ROOT: Prefix = Prefix {
        len: 0,
        bytes: [0; 32],
    };

    /// The first `len` nibbles of `id` (`len` is clamped to [`MAX_PREFIX_NIBBLES`]).
    pub fn of(id: &Id, len: usize) -> Prefix {
        let len = len.min(MAX_PREFIX_NIBBLES);
        let mut bytes = [0u8; 32];
        bytes[..len / 2].copy_from_slice(&id[..len / 2]);
        if !len.is_multiple_of(2) {
            bytes[len / 2] = id[len / 2] & 0xf0;
        }
        Prefix {
            len: len as u8,
            bytes,
        }
    }

    /// Number of nibbles.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True for [`Prefix::ROOT`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The smallest id in the range.
    pub fn min_id(&self) -> &Id {
        &self.bytes
    }

    /// The prefix extended by `nibble`; `None` if already full length or `nibble >= 16`.
    pub fn child(&self, nibble: usize) -> Option<Prefix> {
        if self.len() >= MAX_PREFIX_NIBBLES || nibble >= 16 {
            return None;
        }
        let mut bytes = self.bytes;
        let i = self.len();
        let n = nibble as u8;
        bytes[i / 2] |= if i.is_multiple_of(2) { n << 4 } else { n };
        Some(Prefix {
            len: self.len + 1,
            bytes,
        })
    }

    /// True if `id` lies in the range.
    pub fn contains(&self, id: &Id) -> bool {
        let full = self.len() / 2;
        id[..full] == self.bytes[..full]
            && (self.len().is_multiple_of(2) || id[full] & 0xf0 == self.bytes[full])
    }

    fn encode(&self) -> Vec<u8> {
        let used = self.len().div_ceil(2);
        let mut out = Vec::with_capacity(1 + used);
        out.push(self.len);
        out.extend_from_slice(&self.bytes[..used]);
        out
    }

    fn decode(b: &[u8]) -> Result<Prefix, &'static str> {
        let (&len, rest) = b.split_first().ok_or("empty prefix encoding")?;
        let nibbles = usize::from(len);
        if nibbles > MAX_PREFIX_NIBBLES {
            return Err("prefix longer than 64 nibbles");
        }
        if rest.len() != nibbles.div_ceil(2) {
            return Err("prefix byte length does not match its nibble count");
        }
        let mut bytes = [0u8; 32];
        bytes[..rest.len()].copy_from_slice(rest);
        // Reject a non-zero unused nibble: it would break value equality.
        if !nibbles.is_multiple_of(2) && bytes[nibbles / 2] & 0x0f != 0 {
            return Err("prefix has a non-zero padding nibble");
        }
        Ok(Prefix { len, bytes })
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix(")?;
        for i in 0..self.len() {
            write!(f, "{:x}", nibble_of(&self.bytes, i))?;
        }
        write!(f, ")")
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_packed(s, &self.encode())
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_packed(d, "a packed nibble prefix", Prefix::decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_and_contains_agree_with_of() {
        let id: Id = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        let mut p = Prefix::ROOT;
        for len in 0..=MAX_PREFIX_NIBBLES {
            assert_eq!(p, Prefix::of(&id, len));
            assert!(p.contains(&id));
            assert!(p.min_id() <= &id);
            let back = Prefix::decode(&p.encode()).unwrap();
            assert_eq!(back, p);
            if len < MAX_PREFIX_NIBBLES {
                let n = nibble_of(&id, len);
                let other = p.child((n + 1) % 16).unwrap();
                assert!(!other.contains(&id));
                p = p.child(n).unwrap();
            } else {
                assert!(p.child(0).is_none());
            }
        }
    }

    #[test]
    fn decode_rejects_malformed() {
        assert!(Prefix::decode(&[]).is_err());
        assert!(Prefix::decode(&[65; 34]).is_err());
        assert!(Prefix::decode(&[2, 0xab, 0]).is_err());
        assert!(Prefix::decode(&[3, 0xab, 0xcd]).is_err());
        assert_eq!(Prefix::decode(&[3, 0xab, 0xc0]).unwrap().len(), 3);
    }
}
