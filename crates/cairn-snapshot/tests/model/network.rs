//! The network between clients and coordinators and the shards' leaders: the set of
//! requests in flight. A set, not a queue: any request may be delivered next (reordering),
//! delivered and kept (duplication), or never delivered (loss). Two identical requests
//! in flight are one: delivering that one twice is what duplication is for.

use std::fmt;

use crate::shard::{Command, MAX_EPOCHS, MAX_WRITES};

/// A request in flight to a shard's leader (the router forwards it there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Msg {
    pub shard: u8,
    pub command: Command,
}

const WRITES: u32 = MAX_WRITES as u32;
const EPOCHS: u32 = MAX_EPOCHS as u32;
/// Distinct commands per shard: writes, markers, releases, prepares, resolves.
const PER_SHARD: u32 = WRITES + 2 * EPOCHS + 3 * WRITES;

impl Msg {
    fn bit(&self) -> u32 {
        let slot = match self.command {
            Command::Write(w) => w as u32,
            Command::Marker(e) => WRITES + e as u32,
            Command::Release(e) => WRITES + EPOCHS + e as u32,
            Command::Prepare(t) => WRITES + 2 * EPOCHS + t as u32,
            Command::Resolve { txn, commit } => {
                2 * WRITES + 2 * EPOCHS + 2 * txn as u32 + commit as u32
            }
        };
        self.shard as u32 * PER_SHARD + slot
    }

    fn from_bit(bit: u32) -> Msg {
        let shard = (bit / PER_SHARD) as u8;
        let slot = bit % PER_SHARD;
        let command = if slot < WRITES {
            Command::Write(slot as u8)
        } else if slot < WRITES + EPOCHS {
            Command::Marker((slot - WRITES) as u8)
        } else if slot < WRITES + 2 * EPOCHS {
            Command::Release((slot - WRITES - EPOCHS) as u8)
        } else if slot < 2 * WRITES + 2 * EPOCHS {
            Command::Prepare((slot - WRITES - 2 * EPOCHS) as u8)
        } else {
            let r = slot - 2 * WRITES - 2 * EPOCHS;
            Command::Resolve {
                txn: (r / 2) as u8,
                commit: r % 2 == 1,
            }
        };
        Msg { shard, command }
    }
}

/// The requests in flight, one bit each (cheap to copy and hash, which is most of
/// what the checker does with a state).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Network(u128);

impl Network {
    pub fn insert(&mut self, msg: Msg) {
        self.0 |= 1 << msg.bit();
    }

    pub fn remove(&mut self, msg: &Msg) {
        self.0 &= !(1 << msg.bit());
    }

    pub fn iter(&self) -> impl Iterator<Item = Msg> {
        // By lowest set bit: this runs for every state, and a debug build makes a
        // filtered range over 128 bits the checker's hottest loop.
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let bit = rest.trailing_zeros();
            rest &= rest - 1;
            Some(Msg::from_bit(bit))
        })
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[test]
fn every_request_has_its_own_bit() {
    const { assert!(3 * PER_SHARD <= 128, "three shards fit in the set") };
    for shard in 0..3 {
        for id in 0..MAX_WRITES as u8 {
            for command in [
                Command::Write(id),
                Command::Prepare(id),
                Command::Resolve {
                    txn: id,
                    commit: false,
                },
                Command::Resolve {
                    txn: id,
                    commit: true,
                },
            ] {
                let msg = Msg { shard, command };
                assert_eq!(Msg::from_bit(msg.bit()), msg);
            }
        }
        for e in 0..MAX_EPOCHS as u8 {
            for command in [Command::Marker(e), Command::Release(e)] {
                let msg = Msg { shard, command };
                assert_eq!(Msg::from_bit(msg.bit()), msg);
            }
        }
    }
}
