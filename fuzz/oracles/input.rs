#![allow(dead_code)] // each target reads a different part of its input
//! A fuzz input read as a sequence of typed values, so one byte string drives a
//! structured case the same way in `cargo fuzz` and in the replaying tests.
//!
//! Reads never fail: past the end every value is zero or empty, so every input is a
//! case (libFuzzer then learns which bytes matter from coverage).

pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to eight bytes, big-endian.
    pub fn u64(&mut self) -> u64 {
        let n = self.data.len().min(8);
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head.iter().fold(0, |v, &b| (v << 8) | u64::from(b))
    }

    /// A length byte (modulo `max + 1`), then that many bytes (fewer at the end).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.byte()) % (max + 1);
        self.take(len)
    }

    /// Exactly `len` bytes, or what is left.
    pub fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        head
    }

    /// One of `choices`, by the next byte.
    pub fn choose<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.byte()) % choices.len()]
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}
