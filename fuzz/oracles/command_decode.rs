//! Oracle of the `command_decode` target: `Command::decode`, which reads every Raft
//! log entry a replica applies.
//!
//! On arbitrary bytes it never panics (nor allocates without bound) and fails only
//! with `Corrupt`; what it accepts re-encodes to a command that decodes the same. On
//! structured cases, `decode(encode(c)) == c`.

use cairn_store::{Command, Condition, OpKind, StoreError, WriteOp};

use crate::input::Input;

pub fn check(data: &[u8]) {
    match Command::decode(data) {
        Ok(command) => {
            let again = Command::decode(&command.encode()).expect("a command's own encoding");
            assert_eq!(again, command);
        }
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
    match input.byte() % 4 {
        0 => {
            let ops = (0..input.byte() % 4)
                .map(|_| WriteOp {
                    key: input.bytes(8).to_vec(),
                    kind: if input.bool() {
                        OpKind::Put(input.bytes(8).to_vec())
                    } else {
                        OpKind::Delete
                    },
                    condition: match input.byte() % 4 {
                        0 => Condition::Always,
                        1 => Condition::Absent,
                        2 => Condition::Exists,
                        _ => Condition::Version(input.u64()),
                    },
                })
                .collect();
            Command::Batch(ops)
        }
        1 => Command::Marker { epoch: input.u64() },
        2 => Command::Release { epoch: input.u64() },
        _ => Command::Compact {
            horizon: input.u64(),
        },
    }
}
