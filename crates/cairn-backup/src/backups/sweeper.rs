//! The sweeper: on the meta leader, declare failed the backups whose owner stopped
//! heart-beating, and clean up what they left at their destination.

use std::sync::Arc;

use cairn_cluster::clock::now_ms;
use cairn_cluster::Shards;
use tokio_util::sync::CancellationToken;

use crate::error::BackupError;

use super::Backups;

impl<S: Shards> Backups<S> {
    /// Fail running backups nobody is writing any more: on the meta leader, those
    /// whose owner went silent; on every node once at start, its own (a restart
    /// ended them).
    pub async fn run_sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut own_swept = false;
        let mut every = tokio::time::interval(self.config.heartbeat);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if !own_swept {
                own_swept = self.sweep(true).await.is_ok();
            }
            if self.shards.leads_meta() {
                if let Err(e) = self.sweep(false).await {
                    tracing::debug!(error = %e, "backup sweep");
                }
            }
        }
    }

    pub(super) async fn sweep(&self, own: bool) -> Result<(), BackupError> {
        let now = now_ms();
        let stale = self.config.stale_after.as_millis() as u64;
        for tracked in self.catalog().list().await? {
            let r = &tracked.value;
            if !r.is_running() {
                continue;
            }
            let reason = if own {
                // Started by an earlier run of this node: nothing writes it now.
                if r.node != self.node || r.started_ms >= self.booted_ms {
                    continue;
                }
                format!("node {} restarted while writing it", r.node)
            } else {
                if r.updated_ms + stale > now {
                    continue;
                }
                format!(
                    "node {} stopped writing it (no progress for {} s)",
                    r.node,
                    (now - r.updated_ms) / 1000
                )
            };
            tracing::warn!(id = %r.id, reason, "failing an abandoned backup");
            match self.destination(&r.destination) {
                Ok(dest) => self.fail(&tracked, &dest, &reason).await,
                Err(e) => tracing::warn!(id = %r.id, error = %e, "cannot reach its destination"),
            }
        }
        Ok(())
    }
}
