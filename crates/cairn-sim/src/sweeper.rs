//! The meta leader's sweepers, as the simulator plays them: every second, scan the
//! registry's open epochs (`s/open/`), the transaction records (`t/txn/`) and the
//! gate's wants (`s/want/`) on the simulated meta group, and hand each to the
//! decision production's sweepers make (`cairn_snapshot::Sweep`,
//! `cairn_txn::TxnSweep`, `epoch::stale_wants`). The runs that follow are the
//! coordinators' own ([`crate::epochs`], [`crate::txns`]).
//!
//! It runs through the healing too: what a coordinator left behind must drain, and
//! the run settles only once a sweep found nothing left (no open epoch, no
//! transaction record, no want) at the meta group's final index: a write whose
//! outcome was unknown may still land after an empty sweep (an old leader's entry
//! committed by the next), and the sweeper must see it through too.

use cairn_cluster::keyspace::{GATE_WANT, SNAPSHOT_OPEN, TXN};
use cairn_cluster::meta::{delete, MetaStep};
use cairn_snapshot::epoch::stale_wants;
use cairn_txn::record::Tracked;
use cairn_txn::TxnRecord;

use crate::config::Millis;
use crate::meta::MetaAnswer;
use crate::workload::Owner;
use crate::world::{Event, Phase, World};

/// How often the sweepers look (`sweep_every`).
pub(crate) const SWEEP_EVERY_MS: Millis = 1_000;
/// Wants older than this are dropped (`gate::WANT_EXPIRES`).
const WANT_EXPIRES_MS: u64 = 10_000;

/// What a sweep scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    OpenEpochs,
    Txns,
    Wants,
}

impl Scan {
    const ALL: [Scan; 3] = [Scan::OpenEpochs, Scan::Txns, Scan::Wants];

    fn prefix(self) -> &'static [u8] {
        match self {
            Scan::OpenEpochs => SNAPSHOT_OPEN,
            Scan::Txns => TXN,
            Scan::Wants => GATE_WANT,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl World {
    /// Start a sweep, and schedule the next until the run is done.
    pub(crate) fn sweep(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        for scan in Scan::ALL {
            self.meta_scan(Owner::Sweep(scan), scan.prefix());
        }
        self.clock.after(SWEEP_EVERY_MS, Event::Sweep);
    }

    pub(crate) fn on_sweep_scan(&mut self, scan: Scan, answer: MetaAnswer) {
        let (at, items) = match answer.scanned() {
            Ok(scanned) => scanned,
            Err(_) => {
                // Unanswered: nothing is known to be drained.
                self.work.drained[scan.index()] = None;
                return;
            }
        };
        self.work.drained[scan.index()] = items.is_empty().then_some(at);
        match scan {
            Scan::OpenEpochs => {
                for (key, _) in items {
                    match key.get(SNAPSHOT_OPEN.len()..).map(<[u8; 8]>::try_from) {
                        Some(Ok(id)) => self.sweep_epoch(u64::from_be_bytes(id)),
                        _ => self.fail(format!("a malformed open epoch key {key:?}")),
                    }
                }
            }
            Scan::Txns => {
                for (_, value) in items {
                    match TxnRecord::decode(&value) {
                        Ok(record) => self.sweep_txn(Tracked {
                            record,
                            version: value.version,
                        }),
                        Err(e) => self.fail(format!("a transaction record: {e}")),
                    }
                }
            }
            Scan::Wants => {
                let cutoff = self.wall_ms().saturating_sub(WANT_EXPIRES_MS);
                for key in stale_wants(&items, cutoff) {
                    let step = MetaStep::<()>::Write(vec![delete(key)]);
                    self.meta_step(Owner::SweepDelete, step, true);
                }
            }
        }
    }
}
