//! The call ledger: which forwarded calls a node has already received, per sender
//! incarnation, so a call delivered twice is never executed twice (see the transport's
//! module doc).

use std::collections::{BTreeMap, HashMap, VecDeque};

use cairn_store::NodeId;

use super::frame::CallResult;

/// Calls remembered per sender incarnation; older ones count as seen.
const LEDGER_WINDOW: usize = 4096;
/// Incarnations remembered per sender (a restarted node's old connections may still
/// deliver for a moment).
const LEDGER_INCARNATIONS: usize = 4;

/// (sender node, sender incarnation).
pub(super) type CallSender = (NodeId, u64);

/// What to do with a received call.
#[derive(Debug)]
pub(super) enum Admission {
    /// First sight: execute it.
    New,
    /// A duplicate of a finished write: send its answer again.
    Answered(CallResult),
    /// A duplicate of a call running, of a read, or of one too old to remember: drop it.
    Duplicate,
}

/// The calls a node received, per sender incarnation (see the module doc).
#[derive(Debug, Default)]
pub(super) struct CallLedger {
    senders: HashMap<CallSender, CallWindow>,
    /// Per node, its incarnations in the order first seen.
    incarnations: HashMap<NodeId, VecDeque<u64>>,
}

#[derive(Debug, Default)]
struct CallWindow {
    /// Every id below it counts as seen.
    floor: u64,
    /// Ids at or above `floor` seen so far: `None` while running (or a read),
    /// a write's answer once finished.
    seen: BTreeMap<u64, Option<CallResult>>,
}

impl CallLedger {
    pub(super) fn admit(&mut self, sender: CallSender, id: u64) -> Admission {
        if !self.senders.contains_key(&sender) {
            let known = self.incarnations.entry(sender.0).or_default();
            known.push_back(sender.1);
            if known.len() > LEDGER_INCARNATIONS {
                if let Some(old) = known.pop_front() {
                    self.senders.remove(&(sender.0, old));
                }
            }
        }
        let window = self.senders.entry(sender).or_default();
        if id < window.floor {
            return Admission::Duplicate;
        }
        match window.seen.get(&id) {
            Some(Some(answer)) => Admission::Answered(answer.clone()),
            Some(None) => Admission::Duplicate,
            None => {
                window.seen.insert(id, None);
                while window.seen.len() > LEDGER_WINDOW {
                    if let Some((oldest, _)) = window.seen.pop_first() {
                        window.floor = window.floor.max(oldest + 1);
                    }
                }
                Admission::New
            }
        }
    }

    /// Record a finished call's answer (`None`: not worth keeping, e.g. a read's).
    pub(super) fn finish(&mut self, sender: CallSender, id: u64, answer: Option<CallResult>) {
        if let Some(slot) = self
            .senders
            .get_mut(&sender)
            .and_then(|w| w.seen.get_mut(&id))
        {
            *slot = answer;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_forgets_old_calls_as_seen_never_as_new() {
        let mut ledger = CallLedger::default();
        let sender = (1, 5);
        for id in 0..(LEDGER_WINDOW as u64 + 100) {
            assert!(matches!(ledger.admit(sender, id), Admission::New));
            ledger.finish(sender, id, None);
        }
        // Below the window: a duplicate, never run again.
        assert!(matches!(ledger.admit(sender, 3), Admission::Duplicate));
        assert!(matches!(
            ledger.admit(sender, LEDGER_WINDOW as u64 + 50),
            Admission::Duplicate
        ));
        // A node's oldest incarnations are forgotten first.
        for incarnation in 6..(6 + LEDGER_INCARNATIONS as u64) {
            assert!(matches!(ledger.admit((1, incarnation), 0), Admission::New));
        }
        assert!(!ledger.senders.contains_key(&sender));
        assert!(ledger.senders.contains_key(&(1, 6)));
    }
}
