//! Byte layout of a shard's MVCC data tree.
//!
//! The tree holds every version of every key, so that a snapshot (a log index) can be
//! read without copying anything. One sled key per version:
//!
//! ```text
//! b'd' ++ escape(user_key) ++ [0x00, 0x00] ++ (!version).to_be_bytes()
//! ```
//!
//! `escape` turns every `0x00` of the user key into `[0x00, 0xFF]`. Because of that the
//! terminator `[0x00, 0x00]` cannot appear inside an escaped key, which gives the three
//! properties the reads rely on:
//!
//! 1. **Order.** For user keys `a < b`, every version of `a` sorts before every version
//!    of `b` (a proper prefix ends in `00 00`, which sorts below both a non-zero byte and
//!    the escaped `00 FF`).
//! 2. **Prefixes.** `b'd' ++ escape(p)` is a byte prefix of an encoded key exactly when
//!    `p` is a prefix of its user key, so a prefix scan is a sled prefix scan.
//! 3. **Newest first.** The inverted big-endian version makes the newest version of a
//!    key its first entry, so "latest at or below `at`" is one seek.
//!
//! Values are a tag byte: [`TAG_TOMBSTONE`] alone, or [`TAG_VALUE`] followed by the
//! value's bytes. Tombstones are kept (not removed) so older versions stay readable.
//!
//! Keys that do not start with `b'd'` are shard metadata written in the same batches as
//! the data: [`APPLIED_KEY`] holds the applied (index, term); `b'l'` keys are the locks
//! of prepared transactions and `b't'` keys their records (see [`crate::txn`]).

use crate::error::{Result, StoreError};

/// First byte of every data key.
pub const DATA_PREFIX: u8 = b'd';
/// Key of the applied state; `b'm'` sorts after every data key.
pub const APPLIED_KEY: &[u8] = b"m/applied";
/// Key of the history horizon: reads below it are refused, versions below it may be
/// collected.
pub const HORIZON_KEY: &[u8] = b"m/horizon";
/// Where the transaction horizon is kept: transactions started before it are
/// forgotten and may no longer prepare here (see [`crate::txn`]).
pub const TXN_HORIZON_KEY: &[u8] = b"m/txn_horizon";
/// First byte of every lock key: `b'l' ++ escape(user_key) ++ [0,0]`.
pub const LOCK_PREFIX: u8 = b'l';
/// First byte of every transaction record key: `b't' ++ txn id (u64 BE)`.
pub const TXN_PREFIX: u8 = b't';
/// Value tag of a deletion.
pub const TAG_TOMBSTONE: u8 = 0;
/// Value tag of a live value; the value's bytes follow.
pub const TAG_VALUE: u8 = 1;

const TERMINATOR: [u8; 2] = [0x00, 0x00];
const VERSION_LEN: usize = 8;

fn push_escaped(out: &mut Vec<u8>, user_key: &[u8]) {
    for &b in user_key {
        out.push(b);
        if b == 0x00 {
            out.push(0xFF);
        }
    }
}

fn terminated(tag: u8, user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 3 + VERSION_LEN);
    out.push(tag);
    push_escaped(&mut out, user_key);
    out.extend_from_slice(&TERMINATOR);
    out
}

/// `b'd' ++ escape(user_key) ++ [0,0]`: the common prefix of all versions of `user_key`.
pub fn versions_prefix(user_key: &[u8]) -> Vec<u8> {
    terminated(DATA_PREFIX, user_key)
}

/// The lock-table key of `user_key`: `b'l' ++ escape(user_key) ++ [0,0]`. Lock keys
/// sort like user keys, so the locks under a prefix are one range.
pub fn lock_key(user_key: &[u8]) -> Vec<u8> {
    terminated(LOCK_PREFIX, user_key)
}

/// `b'l' ++ escape(prefix)`: the lock keys of every user key starting with `prefix`.
pub fn lock_scan_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 1);
    out.push(LOCK_PREFIX);
    push_escaped(&mut out, prefix);
    out
}

/// Above the lock key of `user_key` and below that of any greater user key.
pub fn lock_after_key(user_key: &[u8]) -> Vec<u8> {
    let mut out = lock_key(user_key);
    let last = out.len() - 1;
    out[last] = 0x01;
    out
}

/// The record key of transaction `txn`.
pub fn txn_key(txn: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = TXN_PREFIX;
    k[1..].copy_from_slice(&txn.to_be_bytes());
    k
}

/// The tree key of `user_key` at `version`.
pub fn encode_key(user_key: &[u8], version: u64) -> Vec<u8> {
    let mut out = versions_prefix(user_key);
    out.extend_from_slice(&(!version).to_be_bytes());
    out
}

/// `b'd' ++ escape(prefix)`: every data key whose user key starts with `prefix` starts
/// with this, and no other does.
pub fn scan_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 1);
    out.push(DATA_PREFIX);
    push_escaped(&mut out, prefix);
    out
}

/// `b'd' ++ escape(user_key) ++ [0,1]`: above every version of `user_key` and below
/// every version of any greater user key. The lower bound of a scan "after" a key.
pub fn after_key(user_key: &[u8]) -> Vec<u8> {
    let mut out = versions_prefix(user_key);
    let last = out.len() - 1;
    out[last] = 0x01;
    out
}

/// Decode a data key into (user key, version). Anything else is `Corrupt`.
pub fn decode_key(raw: &[u8]) -> Result<(Vec<u8>, u64)> {
    let bad = |why: &str| StoreError::corrupt(format!("data key {raw:02x?}: {why}"));
    if raw.first() != Some(&DATA_PREFIX) {
        return Err(bad("does not start with the data prefix"));
    }
    if raw.len() < 1 + TERMINATOR.len() + VERSION_LEN {
        return Err(bad("too short"));
    }
    let (body, version) = raw.split_at(raw.len() - VERSION_LEN);
    let body = &body[1..];
    let mut user_key = Vec::with_capacity(body.len());
    let mut i = 0;
    loop {
        match body.get(i) {
            None => return Err(bad("no terminator")),
            Some(0x00) => match body.get(i + 1) {
                Some(0xFF) => {
                    user_key.push(0x00);
                    i += 2;
                }
                Some(0x00) if i + 2 == body.len() => break,
                _ => return Err(bad("bad escape")),
            },
            Some(&b) => {
                user_key.push(b);
                i += 1;
            }
        }
    }
    let mut v = [0u8; VERSION_LEN];
    v.copy_from_slice(version);
    Ok((user_key, !u64::from_be_bytes(v)))
}

/// The version of a data key, without decoding the user key. The caller must already
/// know `raw` is a data key (it came out of a data-prefix range); only length is checked.
pub fn key_version(raw: &[u8]) -> Result<u64> {
    if raw.len() < 1 + TERMINATOR.len() + VERSION_LEN {
        return Err(StoreError::corrupt(format!(
            "data key {raw:02x?}: too short"
        )));
    }
    let mut v = [0u8; VERSION_LEN];
    v.copy_from_slice(&raw[raw.len() - VERSION_LEN..]);
    Ok(!u64::from_be_bytes(v))
}

/// The bytes of `raw` that identify its user key (everything but the version).
pub(crate) fn key_identity(raw: &[u8]) -> &[u8] {
    &raw[..raw.len().saturating_sub(VERSION_LEN)]
}

/// Two numbers as 16 bytes (big-endian each): the layout of the applied state, the
/// cut table's records and the transaction horizon.
pub fn encode_pair(a: u64, b: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&a.to_be_bytes());
    v[8..].copy_from_slice(&b.to_be_bytes());
    v
}

/// The inverse of [`encode_pair`]; `None` unless `bytes` is exactly 16 long.
pub fn decode_pair(bytes: &[u8]) -> Option<(u64, u64)> {
    let a = bytes.get(..8)?.try_into().ok().map(u64::from_be_bytes)?;
    let b = bytes.get(8..)?.try_into().ok().map(u64::from_be_bytes)?;
    Some((a, b))
}

/// Encode a value: `Some(bytes)` is live, `None` a tombstone.
pub fn encode_value(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        None => vec![TAG_TOMBSTONE],
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(TAG_VALUE);
            out.extend_from_slice(v);
            out
        }
    }
}

/// Decode a value: `Some(bytes)` if live, `None` if a tombstone.
pub fn decode_value(raw: &[u8]) -> Result<Option<&[u8]>> {
    match raw.split_first() {
        Some((&TAG_VALUE, rest)) => Ok(Some(rest)),
        Some((&TAG_TOMBSTONE, [])) => Ok(None),
        _ => Err(StoreError::corrupt(format!(
            "data value {:02x?}: unknown tag or trailing bytes after a tombstone",
            &raw[..raw.len().min(16)]
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_bytes_are_escaped() {
        assert_eq!(
            encode_key(&[0x00, 0xFF], 1),
            [
                &[b'd', 0x00, 0xFF, 0xFF, 0x00, 0x00][..],
                &(!1u64).to_be_bytes()
            ]
            .concat()
        );
        assert!(decode_key(b"d\x00\x01\x00\x00aaaaaaaa").is_err());
        assert!(decode_key(b"x\x00\x00aaaaaaaa").is_err());
        assert!(decode_key(b"d\x00\x00aaaaaaa").is_err());
        assert!(decode_value(&[2]).is_err());
        assert!(decode_value(&[0, 1]).is_err());
        assert!(decode_value(&[]).is_err());
    }

    fn small_key() -> impl Strategy<Value = Vec<u8>> {
        // Few distinct bytes, biased to 0x00/0xFF, so that prefixes and escapes collide.
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(0xFF), Just(1), any::<u8>()],
            0..6,
        )
    }

    proptest! {
        #[test]
        fn order_is_key_asc_then_version_desc(a in small_key(), b in small_key(), va: u64, vb: u64) {
            let expected = a.cmp(&b).then(vb.cmp(&va));
            prop_assert_eq!(encode_key(&a, va).cmp(&encode_key(&b, vb)), expected);
        }

        #[test]
        fn decode_inverts_encode(k in small_key(), v: u64) {
            prop_assert_eq!(decode_key(&encode_key(&k, v))?, (k, v));
        }

        #[test]
        fn prefix_property(p in small_key(), k in small_key(), v: u64) {
            prop_assert_eq!(encode_key(&k, v).starts_with(&scan_prefix(&p)), k.starts_with(&p));
        }

        #[test]
        fn after_key_separates(a in small_key(), b in small_key(), vb: u64) {
            let bound = after_key(&a);
            prop_assert_eq!(encode_key(&b, vb) > bound, b > a);
        }
    }
}
