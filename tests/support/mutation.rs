//! One change to an encoding (flip bits of a byte, cut it short, insert a byte), for
//! the decoder property tests of several crates (included with `#[path]`).

use proptest::prelude::*;

#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

pub fn mutate(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match *m {
        Mutation::Flip(i, x) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes[i] ^= x;
        }
        Mutation::Flip(..) => {}
        Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
        Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
    }
    bytes
}
