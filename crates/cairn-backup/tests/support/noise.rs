//! Records whose values do not compress (xorshift noise), so that a shard file's size
//! is about its data's and a test can make it span many upload parts.

use cairn_backup::Record;

/// `count` records `key/000000`.. at `version`, each with `value_len` noisy bytes.
pub fn noisy_records(count: usize, value_len: usize, version: u64) -> Vec<Record> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|i| Record {
            key: format!("key/{i:06}").into_bytes(),
            version,
            value: Some(
                (0..value_len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect(),
            ),
        })
        .collect()
}
