//! Property tests of the decoders of what a replica reads back (MVCC keys and values,
//! log commands, cut-table records): arbitrary bytes and single mutations of valid
//! encodings go through the fuzz targets' oracles (`fuzz/oracles/`), with a fixed seed
//! and case count so CI runs the same cases every time (docs/FUZZING.md).

#[path = "../../../fuzz/oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../../../fuzz/oracles/command_decode.rs"]
mod command_decode;
#[path = "../../../fuzz/oracles/cut_decode.rs"]
mod cut_decode;
#[path = "../../../fuzz/oracles/input.rs"]
mod input;
#[path = "../../../fuzz/oracles/key_codec.rs"]
mod key_codec;

/// As in the fuzz targets: one allocation over 256 MiB aborts (a length field sized a
/// buffer), so a regression of that kind fails here too.
#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

#[path = "../../../tests/support/mutation.rs"]
mod mutation;
use cairn_store::{cut, keys, Command, Condition, Cut, OpKind, WriteOp};
use mutation::{mutate, mutation};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config() -> Config {
    Config {
        cases: 2000,
        rng_seed: RngSeed::Fixed(0x00CA_1B5E_ED01),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Keys with few distinct bytes, so escapes and prefixes collide.
fn key() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![Just(0u8), Just(0xFF), Just(1), any::<u8>()],
        0..10,
    )
}

fn command() -> impl Strategy<Value = Command> {
    let condition = prop_oneof![
        Just(Condition::Always),
        Just(Condition::Absent),
        Just(Condition::Exists),
        any::<u64>().prop_map(Condition::Version),
    ];
    let op = (key(), proptest::option::of(key()), condition).prop_map(|(key, value, condition)| {
        WriteOp {
            key,
            kind: value.map_or(OpKind::Delete, OpKind::Put),
            condition,
        }
    });
    prop_oneof![
        vec(op, 0..4).prop_map(Command::Batch),
        any::<u64>().prop_map(|epoch| Command::Marker { epoch }),
        any::<u64>().prop_map(|epoch| Command::Release { epoch }),
        any::<u64>().prop_map(|horizon| Command::Compact { horizon }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_break_a_decoder(data in vec(any::<u8>(), 0..64)) {
        key_codec::check(&data);
        command_decode::check(&data);
        cut_decode::check(&data);
    }

    #[test]
    fn a_mutated_key_is_refused_or_exact(k in key(), v: u64, m in mutation(), value in key()) {
        key_codec::check(&mutate(keys::encode_key(&k, v), &m));
        key_codec::check(&mutate(keys::encode_value(Some(&value)), &m));
    }

    #[test]
    fn a_mutated_command_is_refused_or_round_trips(c in command(), m in mutation()) {
        prop_assert_eq!(Command::decode(&c.encode()).ok(), Some(c.clone()));
        command_decode::check(&mutate(c.encode(), &m));
    }

    #[test]
    fn a_mutated_cut_record_is_refused_or_exact(
        epoch: u64, index: u64, released in proptest::option::of(1..u64::MAX), m in mutation(),
    ) {
        let record = Cut { epoch, index, released_at: released };
        let key = cut::encode_key(epoch);
        let value = cut::encode_value(&record);
        prop_assert_eq!(cut::decode(&key, &value).ok(), Some(record));
        let mut case = vec![key.len() as u8];
        case.extend_from_slice(&key);
        case.extend_from_slice(&value);
        cut_decode::check(&mutate(case, &m));
    }
}

/// A log entry with bytes after its command is corrupt, not the command alone (bincode
/// 1's `deserialize` allowed trailing bytes). Found by the `command_decode` fuzz
/// target's canonical-encoding check; fixed with exact decoding.
#[test]
fn a_command_with_trailing_bytes_is_corrupt() {
    let mut bytes = Command::Marker { epoch: 42 }.encode();
    bytes.push(0);
    assert!(
        Command::decode(&bytes).is_err(),
        "decoded {:?}",
        Command::decode(&bytes)
    );
}
