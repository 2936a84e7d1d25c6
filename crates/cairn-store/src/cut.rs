//! The cut table: where each snapshot's marker landed in this shard's log.
//!
//! A snapshot (epoch `e`) is a `Marker(e)` entry in every shard's log; its log index is
//! the shard's cut `c(s,e)`, and the snapshot holds exactly the entries below it. After
//! the snapshot completes or aborts, a `Release(e)` entry follows. Both are ordinary
//! log entries, so every replica derives the same table from its log, and the table's
//! state at any index is exact:
//!
//! ```text
//! b'c' ++ epoch (u64 BE)  ->  cut index (u64 BE) ++ released at (u64 BE, 0 = open)
//! ```
//!
//! An epoch is *open* (its alignment hold is in force) from its marker until its
//! release. A release that arrives before its marker (the coordinator gave up while the
//! marker was still in flight) is recorded with cut 0, so a late marker opens nothing.

use crate::error::{Result, StoreError};

/// First byte of every cut-table key; sorts before data keys (`b'd'`).
pub const CUT_PREFIX: u8 = b'c';

/// One shard's record of one snapshot epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cut {
    pub epoch: u64,
    /// Log index of the marker; the snapshot holds the entries below it. 0 when the
    /// epoch was released before any marker was applied here.
    pub index: u64,
    /// Log index of the release, or `None` while the epoch is open.
    pub released_at: Option<u64>,
}

impl Cut {
    /// Whether this epoch holds back responses that depend on state after `index`.
    pub fn is_open(&self) -> bool {
        self.index > 0 && self.released_at.is_none()
    }

    /// The cut table's record as it stood after applying entry `upto`, if it existed.
    pub fn as_of(&self, upto: u64) -> Option<Cut> {
        let created = match self.released_at {
            Some(released) if self.index == 0 => released,
            _ => self.index,
        };
        if created > upto {
            return None;
        }
        Some(Cut {
            released_at: self.released_at.filter(|&r| r <= upto),
            ..*self
        })
    }
}

pub fn encode_key(epoch: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = CUT_PREFIX;
    k[1..].copy_from_slice(&epoch.to_be_bytes());
    k
}

pub fn encode_value(cut: &Cut) -> [u8; 16] {
    crate::keys::encode_pair(cut.index, cut.released_at.unwrap_or(0))
}

pub fn decode(key: &[u8], value: &[u8]) -> Result<Cut> {
    let bad = || StoreError::corrupt(format!("cut-table record {key:02x?} = {value:02x?}"));
    let (Some(&CUT_PREFIX), Ok(epoch)) = (key.first(), key.get(1..).unwrap_or_default().try_into())
    else {
        return Err(bad());
    };
    let Some((index, released)) = crate::keys::decode_pair(value) else {
        return Err(bad());
    };
    Ok(Cut {
        epoch: u64::from_be_bytes(epoch),
        index,
        released_at: (released != 0).then_some(released),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_history() {
        let cut = Cut {
            epoch: 7,
            index: 10,
            released_at: Some(12),
        };
        assert_eq!(decode(&encode_key(7), &encode_value(&cut)).unwrap(), cut);
        assert_eq!(cut.as_of(9), None, "not yet marked at 9");
        assert_eq!(
            cut.as_of(11).map(|c| c.is_open()),
            Some(true),
            "open between marker and release"
        );
        assert_eq!(cut.as_of(12).map(|c| c.is_open()), Some(false));
        let early = Cut {
            epoch: 8,
            index: 0,
            released_at: Some(5),
        };
        assert!(!early.is_open(), "a release without a marker holds nothing");
        assert_eq!(early.as_of(4), None);
        assert!(decode(b"c12", &[0; 16]).is_err());
    }
}
