//! The coordinator: takes a snapshot by placing a marker in every shard's log.
//!
//! 1. Allocate epoch `e` in the meta group (a pending record).
//! 2. Propose `Marker(e)` to every shard's leader, in parallel. The marker's log index
//!    is the shard's cut; from applying it, a shard holds back every answer that
//!    depends on later state (the alignment window).
//! 3. If every shard answered within `marker_timeout`, record `Done(cuts)`; otherwise
//!    `Aborted`. The record is updated conditionally, so if the sweeper aborted the
//!    epoch meanwhile, the abort stands.
//! 4. Answer the caller, and propose `Release(e)` to every shard in the background,
//!    ending the windows; then close the epoch.
//!
//! Any node can coordinate; the meta log serialises what matters. A coordinator that
//! dies mid-way leaves an open epoch behind: the sweeper, which runs on the meta
//! group's leader, aborts epochs pending for longer than `abort_after` and releases
//! every epoch that is finished but not yet released. So a window closes about
//! `abort_after` after its epoch began (plus a meta election if the meta leader
//! died), across crashes and leader changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_store::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::epoch::{Sweep, SWEPT};
use crate::error::SnapshotError;
use crate::marking::Marking;
use crate::registry::{Registry, SnapshotRecord, SnapshotState};
use cairn_cluster::clock::now_ms;
use cairn_cluster::Shards;

/// Timing of the protocol.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// How long every shard has to place its marker before the snapshot aborts.
    pub marker_timeout: Duration,
    /// How long an epoch may stay pending before the sweeper aborts it. Exceeds
    /// `marker_timeout` with room for the registry writes; it bounds how long a
    /// coordinator's death can hold answers back.
    pub abort_after: Duration,
    /// How often the sweeper looks at open epochs.
    pub sweep_every: Duration,
    /// Take a snapshot this often while data is being written; `None` disables.
    pub auto_interval: Option<Duration>,
    /// How long automatic snapshots are kept.
    pub retention: Duration,
    /// How often the meta leader raises the shards' history horizons.
    pub gc_every: Duration,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            marker_timeout: Duration::from_secs(2),
            abort_after: Duration::from_secs(3),
            sweep_every: Duration::from_secs(1),
            auto_interval: Some(Duration::from_secs(1)),
            retention: Duration::from_secs(24 * 3600),
            gc_every: Duration::from_secs(30),
        }
    }
}

pub struct Coordinator<S: Shards> {
    shards: Arc<S>,
    config: SnapshotConfig,
    /// Releases still running after their snapshot was answered (see
    /// [`Coordinator::take`]).
    releases: TaskTracker,
}

impl<S: Shards> Coordinator<S> {
    pub fn new(shards: Arc<S>, config: SnapshotConfig) -> Self {
        Coordinator {
            shards,
            config,
            releases: TaskTracker::new(),
        }
    }

    /// Wait until every release started by [`Coordinator::take`] has ended. For one
    /// caller at a time (node shutdown, tests): a second caller's `reopen` could make
    /// the first wait for releases started after it asked.
    pub async fn settled(&self) {
        self.releases.close();
        self.releases.wait().await;
        self.releases.reopen();
    }

    pub fn registry(&self) -> Registry<'_, S> {
        Registry::new(&self.shards)
    }

    /// Take a snapshot; answers once it is complete (or aborted): once its record is
    /// final in the meta group. The releases that close the shards' alignment windows
    /// then run in the background: the snapshot's caller needs nothing from them, and
    /// waiting would cost it two more Raft rounds (the releases, then the epoch's
    /// close). Answers they hold wait for them either way; if this node dies first,
    /// the meta leader's sweeper releases the epoch.
    pub async fn take(&self, name: Option<&str>) -> Result<SnapshotRecord, SnapshotError> {
        self.take_as(name, false).await
    }

    async fn take_as(
        &self,
        name: Option<&str>,
        auto: bool,
    ) -> Result<SnapshotRecord, SnapshotError> {
        let registry = self.registry();
        let pending = registry.allocate(name, auto).await?;
        cairn_store::crash_point!("snapshot.allocated");
        let epoch = pending.record.id;
        let mut marking = Marking::new(epoch, self.shards.shard_count());
        let markers = (0..self.shards.shard_count()).map(|shard| {
            let marker = marking.marker();
            async move {
                // Tests spread the markers' landing over time (as a slow link would),
                // so shards are cut at visibly different moments.
                if let Some(delay) = cairn_store::delay_point!("snapshot.marker.delay") {
                    tokio::time::sleep(delay).await;
                }
                let placed = self.shards.propose(shard, marker);
                let answer = match tokio::time::timeout(self.config.marker_timeout, placed).await {
                    Ok(answer) => answer.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "no marker placed within {:?}",
                        self.config.marker_timeout
                    )),
                };
                (shard, answer)
            }
        });
        for (shard, answer) in futures::future::join_all(markers).await {
            marking.on_answer(shard, answer);
        }
        cairn_store::crash_point!("snapshot.marked");
        // Every shard answered above (a timeout is an answer); this only makes the
        // decision total.
        marking.on_deadline("no answer");
        let state = marking.decision().unwrap_or(SnapshotState::Aborted {
            reason: "a shard never answered its marker".into(),
        });
        let record = registry.finish(&pending, state).await;
        cairn_store::crash_point!("snapshot.finished");
        // Release even if recording failed: the windows must close either way. But
        // close the epoch only once its record is final: closed, an epoch is out of
        // the sweeper's sight, and a record whose finish failed would stay pending
        // forever (found by the simulator, seed 166).
        let releasing = Releasing {
            shards: self.shards.clone(),
            config: self.config.clone(),
        };
        let close = record.is_ok();
        self.releases.spawn(
            async move { releasing.release(epoch, close).await }
                .instrument(tracing::info_span!("snapshot_release", epoch)),
        );
        let record = record?;
        match &record.state {
            SnapshotState::Done { .. } => {
                tracing::info!(epoch, "snapshot complete");
                Ok(record)
            }
            SnapshotState::Aborted { reason } => {
                tracing::warn!(epoch, %reason, "snapshot aborted");
                Err(SnapshotError::Aborted {
                    id: epoch,
                    reason: reason.clone(),
                })
            }
            SnapshotState::Pending => Err(SnapshotError::Corrupt(format!(
                "snapshot {epoch} still pending after it finished"
            ))),
        }
    }

    async fn release(&self, epoch: u64, close: bool) -> bool {
        Releasing {
            shards: self.shards.clone(),
            config: self.config.clone(),
        }
        .release(epoch, close)
        .await
    }

    /// One pass of the sweeper (meta leader only): abort epochs pending too long,
    /// release finished ones. `first_seen` remembers when each pending epoch was first
    /// seen by this leader, so clock skew between nodes cannot shorten the wait.
    pub async fn sweep(&self, first_seen: &mut HashMap<u64, Instant>) -> Result<(), SnapshotError> {
        if !self.shards.leads_meta() {
            first_seen.clear();
            return Ok(());
        }
        let registry = self.registry();
        registry.drop_stale_wants().await?;
        let open = registry.open_epochs().await?;
        first_seen.retain(|id, _| open.contains(id));
        for epoch in open {
            let tracked = registry.get(epoch).await?;
            // Age by whichever clock says older: the allocation's wall-clock label (the
            // coordinator may have died long before this leader took over) or this
            // leader's own first sighting. Skew can only make an abort early, and an
            // abort is always safe.
            let aged = |time_ms: u64| {
                let seen = *first_seen.entry(epoch).or_insert_with(Instant::now);
                let labelled = Duration::from_millis(now_ms().saturating_sub(time_ms));
                seen.elapsed().max(labelled) >= self.config.abort_after
            };
            match (
                Sweep::of(tracked.as_ref().map(|t| &t.record), aged),
                tracked,
            ) {
                (Sweep::Close, _) => registry.close(epoch).await?,
                (Sweep::Abort, Some(tracked)) => {
                    let reason = SWEPT.to_owned();
                    registry
                        .finish(&tracked, SnapshotState::Aborted { reason })
                        .await?;
                    self.release(epoch, true).await;
                }
                (Sweep::Release, _) => {
                    self.release(epoch, true).await;
                }
                (Sweep::Abort, None) | (Sweep::Leave, _) => {}
            }
        }
        Ok(())
    }

    /// One round of automatic snapshots (meta leader only): take one if data was
    /// written since the last, then drop automatic snapshots past the retention.
    /// `last` is the write count the previous automatic snapshot covered.
    pub async fn auto_round(&self, last: &mut Option<u64>) -> Result<(), SnapshotError> {
        if !self.shards.leads_meta() {
            *last = None;
            return Ok(());
        }
        let seen = self.shards.writes_seen().await;
        if seen.is_none() || *last != seen {
            self.take_as(None, true).await?;
            *last = seen;
        }
        let cutoff = now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        let registry = self.registry();
        for record in registry.expired_auto(cutoff, 100).await? {
            registry.delete(&record).await?;
        }
        Ok(())
    }

    /// One round of history GC (meta leader only): raise each shard's horizon to the
    /// oldest version a retained snapshot reads there. Returns the horizons proposed.
    ///
    /// Skipped while any epoch is open: a marker still in flight could otherwise land
    /// below the new horizon. A snapshot allocated after the registry was read gets
    /// cuts above every shard's applied index, so above the horizon. With no retained
    /// snapshot, history is kept (there is no safe point to collect up to).
    pub async fn gc_round(&self) -> Result<BTreeMap<u32, u64>, SnapshotError> {
        let mut proposed = BTreeMap::new();
        if !self.shards.leads_meta() {
            return Ok(proposed);
        }
        let registry = self.registry();
        if !registry.open_epochs().await?.is_empty() {
            return Ok(proposed);
        }
        let done = registry.all_done().await?;
        for shard in 0..self.shards.shard_count() {
            let Some(horizon) = done.iter().filter_map(|r| r.read_version(shard)).min() else {
                continue;
            };
            self.shards
                .propose(shard, Command::Compact { horizon })
                .await?;
            proposed.insert(shard, horizon);
        }
        // Nobody reads the registry's own history: collect all of it.
        let meta = self.shards.shard_count();
        self.shards
            .propose(meta, Command::Compact { horizon: u64::MAX })
            .await?;
        Ok(proposed)
    }

    /// Run history GC rounds until `cancel` fires.
    pub async fn run_gc(self: Arc<Self>, cancel: CancellationToken) {
        let mut every = tokio::time::interval(self.config.gc_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Err(e) = self.gc_round().await {
                tracing::debug!(error = %e, "history GC round incomplete");
            }
        }
    }

    /// Take automatic snapshots until `cancel` fires (if configured).
    pub async fn run_auto(self: Arc<Self>, cancel: CancellationToken) {
        let Some(interval) = self.config.auto_interval else {
            return;
        };
        let mut last = None;
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Err(e) = self.auto_round(&mut last).await {
                tracing::debug!(error = %e, "automatic snapshot skipped");
            }
        }
    }

    /// Run the sweeper until `cancel` fires.
    pub async fn run_sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut first_seen = HashMap::new();
        let mut every = tokio::time::interval(self.config.sweep_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Err(e) = self.sweep(&mut first_seen).await {
                tracing::debug!(error = %e, "snapshot sweep incomplete; retrying");
            }
        }
    }
}

/// What a release needs, owned, so it can outlive the call that took the snapshot.
struct Releasing<S: Shards> {
    shards: Arc<S>,
    config: SnapshotConfig,
}

impl<S: Shards> Releasing<S> {
    /// Propose `Release(epoch)` to every shard; once all have applied it, close the
    /// epoch in the registry if `close` (else only end its marking). Returns whether
    /// every shard released (else the sweeper retries).
    async fn release(&self, epoch: u64, close: bool) -> bool {
        let count = self.shards.shard_count();
        let releases = (0..count).map(|shard| {
            let release = self.shards.propose(shard, Command::Release { epoch });
            tokio::time::timeout(self.config.marker_timeout, release)
        });
        let all = futures::future::join_all(releases)
            .await
            .into_iter()
            .all(|r| matches!(r, Ok(Ok(_))));
        if all {
            // An epoch whose record is not known final stays open for the sweeper, but
            // its marking is over: the gate need not keep commits waiting meanwhile.
            let registry = Registry::new(&*self.shards);
            let ended = if close {
                registry.close(epoch).await
            } else {
                registry.open_gate(epoch).await
            };
            if let Err(e) = ended {
                tracing::debug!(epoch, close, error = %e, "could not end the epoch's marking yet");
                return false;
            }
        }
        all
    }
}
