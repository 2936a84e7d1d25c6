//! Printing a counterexample so that a reader can follow it: the steps, then every
//! shard's log with its cuts, the registry and what clients knew.

use crate::network::Msg;
use crate::shard::Command;
use crate::system::{Action, Cluster, Record, State};

fn step(action: &Action) -> String {
    let msg = |m: &Msg| format!("{:?} to shard {}", m.command, m.shard);
    match action {
        Action::Invoke(w) => format!("client sends write {w} (or begins transaction {w})"),
        Action::Deliver {
            msg: m,
            keep: false,
        } => format!("leader proposes {}", msg(m)),
        Action::Deliver { msg: m, keep: true } => {
            format!("leader proposes {} (a copy stays in flight)", msg(m))
        }
        Action::Lose(m) => format!("network loses {}", msg(m)),
        Action::Commit(s) => format!("shard {s} commits and applies its next entry"),
        Action::ElectLeader { shard, keep } => {
            format!("shard {shard} elects a new leader ({keep} uncommitted entries survive)")
        }
        Action::StaleRead(s) => format!("client reads shard {s} (stale)"),
        Action::LinearizableRead(s) => format!("client reads shard {s} (linearizable)"),
        other => format!("{other:?}"),
    }
}

/// The trace as text: numbered steps, then the final state.
pub fn render(model: &Cluster, path: &[(State, Option<Action>)]) -> String {
    let mut out = String::new();
    for (i, (_, action)) in path.iter().enumerate() {
        if let Some(action) = action {
            out += &format!("{:>3}. {}\n", i + 1, step(action));
        }
    }
    let Some((last, _)) = path.last() else {
        return out;
    };
    out += "final state:\n";
    for (s, shard) in last
        .shards
        .iter()
        .take(model.config.shards as usize)
        .enumerate()
    {
        let entries: Vec<String> = shard
            .log
            .iter()
            .enumerate()
            .map(|(i, e)| match e.command {
                Command::Write(w) => format!("{}:W{w}", i + 1),
                Command::Marker(e) => format!("{}:Marker(e{})", i + 1, e + 1),
                Command::Release(e) => format!("{}:Release(e{})", i + 1, e + 1),
                Command::Prepare(t) => format!("{}:Prepare(T{t})", i + 1),
                Command::Resolve { txn, commit } => format!(
                    "{}:Resolve(T{txn}, {})",
                    i + 1,
                    if commit { "commit" } else { "abort" }
                ),
            })
            .collect();
        out += &format!(
            "  shard {s} log [{}] (committed {})\n",
            entries.join(", "),
            shard.committed
        );
    }
    for (e, snapshot) in last
        .snapshots
        .iter()
        .take(model.config.snapshots as usize)
        .enumerate()
    {
        let record = match snapshot.record {
            Record::Done { cuts } => {
                format!("Done, cuts {:?}", &cuts[..model.config.shards as usize])
            }
            other => format!("{other:?}"),
        };
        out += &format!("  snapshot e{}: {record}\n", e + 1);
    }
    let writes = |set: u16| -> Vec<usize> {
        (0..model.config.writes.len())
            .filter(|w| set & 1 << w != 0)
            .collect()
    };
    out += &format!(
        "  acknowledged {:?}, seen {:?}\n",
        writes(last.clients.acked),
        writes(last.clients.observed)
    );
    for w in 0..model.config.writes.len() {
        if last.clients.invoked & 1 << w != 0 {
            out += &format!(
                "  write {w} was sent knowing {:?}\n",
                writes(last.clients.known[w])
            );
        }
    }
    out
}
