//! Checked-in scenario scripts for the state machine's side of the marker protocol
//! and of cross-shard transactions (`tests/scenarios/*.txt`), in the manner of
//! raft-rs's data-driven tests: each block is a command, a `----` line, and the
//! output it must produce. Applying an entry prints its outcome and its `Effects` (the
//! holds, locks and flags the replica acts on), so a script reads as the protocol's
//! story and fails when either changes.
//!
//! Commands (the entry's index is the next one after the last applied):
//!
//! ```text
//! batch put k=v | del k | put k=v if=absent|exists|<version> ...
//! marker <epoch>          release <epoch>          compact <horizon>
//! prepare <txn> put k=v ...                        resolve <txn> commit|abort
//! get <key> [at=<version>]   lock <key>   holds
//! ```
//!
//! Run with `UPDATE_SCENARIOS=1` to rewrite the expected outputs after a deliberate
//! change, then read the diff.

use std::fmt::Write as _;
use std::path::Path;

use cairn_store::{
    ApplyOutcome, Command, Condition, Effects, NodeStore, OpKind, ReadScope, ShardState, WriteOp,
};

struct Shard {
    _dir: tempfile::TempDir,
    _store: NodeStore,
    state: ShardState,
    index: u64,
}

impl Shard {
    fn new() -> Shard {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = NodeStore::open(dir.path()).expect("store");
        let state = store.shard_state(0).expect("shard");
        Shard {
            _dir: dir,
            _store: store,
            state,
            index: 0,
        }
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (verb, args) = words.split_first().expect("an empty command");
        let command = match *verb {
            "batch" => Command::Batch(ops(args)),
            "marker" => Command::Marker {
                epoch: num(args[0]),
            },
            "release" => Command::Release {
                epoch: num(args[0]),
            },
            "compact" => Command::Compact {
                horizon: num(args[0]),
            },
            "prepare" => Command::Prepare {
                txn: num(args[0]),
                ops: ops(&args[1..]),
            },
            "resolve" => Command::Resolve {
                txn: num(args[0]),
                commit: match args[1] {
                    "commit" => true,
                    "abort" => false,
                    other => panic!("resolve takes commit or abort, not {other}"),
                },
            },
            "get" => return self.get(args),
            "lock" => {
                let scope = ReadScope::Key(args[0].as_bytes().to_vec());
                return match self.state.lock_in(&scope).expect("lock_in") {
                    Some(txn) => format!("locked by {txn}"),
                    None => "unlocked".into(),
                };
            }
            "holds" => {
                let holds = self.state.open_holds().expect("holds");
                let shown: Vec<String> = holds
                    .iter()
                    .map(|h| format!("{}@{}", h.id, h.from))
                    .collect();
                return format!("holds [{}]", shown.join(" "));
            }
            other => panic!("unknown command {other}"),
        };
        self.index += 1;
        let data = command.encode();
        let (outcome, effects) = self.state.apply_entry(self.index, 1, &data).expect("apply");
        format!(
            "{}: {}{}",
            self.index,
            show(&outcome),
            show_effects(&effects)
        )
    }

    fn get(&self, args: &[&str]) -> String {
        let at = args
            .iter()
            .find_map(|a| a.strip_prefix("at="))
            .map_or(u64::MAX, num);
        match self.state.get(args[0].as_bytes(), at) {
            Ok(Some(v)) => format!("{}@{}", String::from_utf8_lossy(&v.value), v.version),
            Ok(None) => "none".into(),
            Err(e) => format!("error: {e}"),
        }
    }
}

fn num(text: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|_| panic!("not a number: {text}"))
}

fn ops(args: &[&str]) -> Vec<WriteOp> {
    let mut ops: Vec<WriteOp> = Vec::new();
    let mut words = args.iter();
    while let Some(&word) = words.next() {
        match word {
            "put" => {
                let kv = words.next().expect("put k=v");
                let (k, v) = kv.split_once('=').expect("put k=v");
                ops.push(WriteOp {
                    key: k.as_bytes().to_vec(),
                    kind: OpKind::Put(v.as_bytes().to_vec()),
                    condition: Condition::Always,
                });
            }
            "del" => ops.push(WriteOp {
                key: words.next().expect("del k").as_bytes().to_vec(),
                kind: OpKind::Delete,
                condition: Condition::Always,
            }),
            cond if cond.starts_with("if=") => {
                let last = ops.last_mut().expect("a condition follows an op");
                last.condition = match &cond[3..] {
                    "absent" => Condition::Absent,
                    "exists" => Condition::Exists,
                    version => Condition::Version(num(version)),
                };
            }
            other => panic!("unknown op {other}"),
        }
    }
    ops
}

fn show(outcome: &ApplyOutcome) -> String {
    match outcome {
        ApplyOutcome::Applied { version, existed } => {
            format!("applied at {version} existed={existed:?}")
        }
        ApplyOutcome::Rejected { op, current } => {
            format!("rejected op {op} (current {current:?})")
        }
        ApplyOutcome::Marked { cut } => format!("marked cut={cut}"),
        ApplyOutcome::Released => "released".into(),
        ApplyOutcome::Compacted { horizon } => format!("compacted horizon={horizon}"),
        ApplyOutcome::Locked { op, txn } => format!("locked op {op} by {txn}"),
        ApplyOutcome::Prepared { existed } => format!("prepared existed={existed:?}"),
        ApplyOutcome::TxnClosed => "txn closed".into(),
        ApplyOutcome::Resolved { committed, version } => {
            format!("resolved committed={committed} version={version:?}")
        }
        ApplyOutcome::TxnsForgotten { forgotten } => format!("forgot {forgotten}"),
    }
}

fn show_effects(e: &Effects) -> String {
    let mut out = String::new();
    if let Some(h) = e.opens {
        let _ = write!(out, " | opens {}@{}", h.id, h.from);
    }
    if let Some(id) = e.closes {
        let _ = write!(out, " | closes {id}");
    }
    if let Some(txn) = e.unlocks {
        let _ = write!(out, " | unlocks {txn}");
    }
    if e.reveals_nothing {
        out.push_str(" | reveals nothing");
    }
    if e.wrote_data {
        out.push_str(" | wrote data");
    }
    out
}

/// Runs one script; returns it with the outputs as they are now.
fn run_script(text: &str) -> String {
    let mut shard = Shard::new();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let command = line;
        assert_eq!(lines.next(), Some("----"), "`{command}` needs a ---- line");
        // Skip the expected output: up to a blank line or the end.
        while lines.peek().is_some_and(|l| !l.trim().is_empty()) {
            lines.next();
        }
        let _ = writeln!(out, "{command}\n----\n{}", shard.run(command));
    }
    out
}

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/scenarios")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the scenario scripts are missing");
    let update = std::env::var_os("UPDATE_SCENARIOS").is_some();
    let mut failed = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let got = run_script(&text);
        if got != text {
            if update {
                std::fs::write(&file, &got).expect("write");
            } else {
                failed.push(format!(
                    "{}:\n--- expected\n{text}\n--- got\n{got}",
                    file.display()
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
