//! The audit log: every admin action that changes something (an admin route, a method
//! other than GET), who asked it, and how it was answered, kept in the meta group
//! under `a/audit/`, newest first. Recorded after the answer is known and before it
//! is sent; a record that cannot be written is logged, and the answer still goes
//! out (the action happened either way).

use std::sync::atomic::{AtomicU32, Ordering};

use cairn_client::api::AuditRecord;
use cairn_cluster::keyspace::AUDIT;
use cairn_cluster::meta::{self, Meta, MetaError};
use cairn_store::Condition;

use crate::router::Control;

/// Longest path kept in a record: the rest of a path a client chose is cut.
const MAX_PATH_BYTES: usize = 256;

/// Distinguishes records one node writes in the same millisecond.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Record one action.
pub async fn record(control: &Control, mut record: AuditRecord) -> Result<(), MetaError> {
    if record.path.len() > MAX_PATH_BYTES {
        let mut cut = MAX_PATH_BYTES;
        while !record.path.is_char_boundary(cut) {
            cut -= 1;
        }
        record.path.truncate(cut);
    }
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let key = [
        AUDIT,
        &(!record.time_ms).to_be_bytes(),
        &record.node.to_be_bytes(),
        &seq.to_be_bytes(),
    ]
    .concat();
    // A record is plain data; serialising it cannot fail.
    let value = serde_json::to_vec(&record).unwrap_or_default();
    Meta::new(control)
        .write(vec![meta::put(key, value, Condition::Always)])
        .await
        .map(drop)
}

/// The newest `limit` records, newest first.
pub async fn newest(control: &Control, limit: usize) -> Result<Vec<AuditRecord>, MetaError> {
    let page = Meta::new(control).scan(AUDIT, None, limit).await?;
    page.items
        .into_iter()
        .map(|(_, versioned)| {
            serde_json::from_slice(&versioned.value)
                .map_err(|e| MetaError::Corrupt(format!("an audit record: {e}")))
        })
        .collect()
}
