//! Oracle of the `command_decode` target: `Command::decode`, which reads every Raft
//! log entry a replica applies.
//!
//! On arbitrary bytes it never panics (nor allocates without bound) and fails only
//! with `Corrupt`; what it accepts is exactly the encoding of what it decodes to
//! (`encode(decode(data)) == data`: no trailing bytes, no second spelling of one
//! command). On structured cases, `decode(encode(c)) == c`.

use cairn_store::{Command, Condition, OpKind, StoreError, WriteOp};

use crate::input::Input;

pub fn check(data: &[u8]) {
    match Command::decode(data) {
        Ok(command) => assert_eq!(
            command.encode(),
            data,
            "{command:?} was decoded from bytes that are not its encoding"
        ),
        Err(e) => assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}"),
    }

    let mut input = Input::new(data);
    let command = structured(&mut input);
    assert_eq!(
        Command::decode(&command.encode()).expect("a command's own encoding"),
        command
    );
}

fn structured(input: &mut Input<'_>) -> Command {
    match input.byte() % 7 {
        0 => Command::Batch(ops(input)),
        1 => Command::Marker { epoch: input.u64() },
        2 => Command::Release { epoch: input.u64() },
        3 => Command::Compact {
            horizon: input.u64(),
        },
        4 => Command::Prepare {
            txn: input.u64(),
            ops: ops(input),
        },
        5 => Command::Resolve {
            txn: input.u64(),
            commit: input.bool(),
        },
        _ => Command::TxnHorizon {
            before_ms: input.u64(),
        },
    }
}

fn ops(input: &mut Input<'_>) -> Vec<WriteOp> {
    (0..input.byte() % 4)
        .map(|_| WriteOp {
            key: input.bytes(8).to_vec(),
            kind: match input.byte() % 3 {
                0 => OpKind::Put(input.bytes(8).to_vec()),
                1 => OpKind::Delete,
                _ => OpKind::Check,
            },
            condition: match input.byte() % 6 {
                0 => Condition::Always,
                1 => Condition::Absent,
                2 => Condition::Exists,
                3 => Condition::NothingUnder,
                4 => Condition::VersionIn((0..input.byte() % 3).map(|_| input.u64()).collect()),
                _ => Condition::Version(input.u64()),
            },
        })
        .collect()
}
