//! Oracle of the `cut_decode` target: the cut table's records (`cairn_store::cut`).
//!
//! The first byte splits the input into a record key and value. Decoding never
//! panics, accepts exactly what the encoders write, and the decoded cut's history
//! (`as_of`, `is_open`) is defined at every index.

use cairn_store::cut;

use crate::input::Input;

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let key_len = usize::from(input.byte() % 20);
    let key = input.take(key_len);
    let value = input.rest();
    if let Ok(record) = cut::decode(key, value) {
        assert_eq!(&cut::encode_key(record.epoch)[..], key);
        assert_eq!(&cut::encode_value(&record)[..], value);
        for upto in [0, 1, record.index, record.index.saturating_add(1), u64::MAX] {
            if let Some(then) = record.as_of(upto) {
                assert!(!then.is_open() || record.index <= upto);
            }
        }
        if let Some(released) = record.released_at {
            assert!(!record.as_of(released).is_some_and(|c| c.is_open()));
        }
    }
}
