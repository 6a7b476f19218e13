//! CBOR encoding shared by every layer that stores or sends structured data: the wire protocol,
//! the store's tables and share tokens.
//!
//! One place, so that the choice of crate (`ciborium`) and the error a caller sees are the same
//! everywhere, and so that the store and tokens need not reach into the network layer for it.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value that could not be encoded, or bytes that are not the CBOR of the expected type.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    /// Serialising failed (in practice: a writer error or a type serde cannot express).
    #[error("cannot encode as CBOR: {0}")]
    Encode(String),
    /// The bytes are not well-formed CBOR of the expected shape.
    #[error("bad CBOR: {0}")]
    Decode(String),
}

/// CBOR-encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CborError> {
    let mut buf = Vec::new();
    ciborium::into_writer(value, &mut buf).map_err(|e| CborError::Encode(e.to_string()))?;
    Ok(buf)
}

/// Decodes CBOR into `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    ciborium::from_reader(bytes).map_err(|e| CborError::Decode(e.to_string()))
}

/// How many bytes `value` takes as CBOR, without keeping them.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0 += data.len();
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = ciborium::into_writer(value, &mut counter);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_input() {
        let value = (7u32, "seven".to_owned(), vec![1u8, 2, 3]);
        let bytes = encode(&value).unwrap();
        assert_eq!(encoded_len(&value), bytes.len());
        assert_eq!(decode::<(u32, String, Vec<u8>)>(&bytes).unwrap(), value);
        let err = decode::<(u32, String)>(&[0xff, 0x00]).unwrap_err();
        assert!(matches!(err, CborError::Decode(_)), "{err}");
    }
}
