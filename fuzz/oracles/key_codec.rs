//! Oracle of the `key_codec` target: the MVCC data-tree layout of `cairn_store::keys`.
//!
//! On arbitrary bytes the decoders never panic, and what they accept is exactly what
//! the encoders produce (one encoding per key and version, so a corrupt key is never
//! read as another). On structured cases: decoding inverts encoding, the encoding
//! sorts by user key then newest version first, prefixes of escaped keys are exactly
//! prefixes of user keys, and `after_key` separates a key from every greater one.

use cairn_store::keys;

use crate::input::Input;

pub fn check(data: &[u8]) {
    if let Ok((key, version)) = keys::decode_key(data) {
        assert_eq!(
            keys::encode_key(&key, version),
            data,
            "decode_key accepted a key the encoder never writes"
        );
        assert_eq!(keys::key_version(data).ok(), Some(version));
    }
    let _ = keys::key_version(data);
    if let Ok(value) = keys::decode_value(data) {
        assert_eq!(keys::encode_value(value), data, "decode_value is not exact");
    }

    let mut input = Input::new(data);
    let a = input.bytes(12).to_vec();
    let va = input.u64();
    let b = input.bytes(12).to_vec();
    let vb = input.u64();
    let p = input.bytes(4).to_vec();

    let ea = keys::encode_key(&a, va);
    let eb = keys::encode_key(&b, vb);
    assert_eq!(keys::decode_key(&ea).ok(), Some((a.clone(), va)));
    assert_eq!(
        ea.cmp(&eb),
        a.cmp(&b).then(vb.cmp(&va)),
        "order of ({a:02x?}, {va}) and ({b:02x?}, {vb})"
    );
    assert!(ea.starts_with(&keys::versions_prefix(&a)));
    assert_eq!(ea.starts_with(&keys::scan_prefix(&p)), a.starts_with(&p));
    assert_eq!(eb > keys::after_key(&a), b > a);
    assert_eq!(
        keys::decode_value(&keys::encode_value(Some(&b))).ok(),
        Some(Some(&b[..]))
    );
}
