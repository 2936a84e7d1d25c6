//! Backup schedules: on the meta leader, exactly one backup per cron tick
//! cluster-wide, claimed through the schedule's record in the meta group.

use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::clock::now_ms;
use cairn_cluster::Shards;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::catalog::{BackupRecord, ScheduleState};
use crate::destination::Destination;
use crate::error::BackupError;
use crate::manifest::Manifest;
use crate::schedule::Schedule;
use crate::verify::read_manifest;

use super::{rfc3339_ms, Backups, Job};

impl<S: Shards> Backups<S> {
    /// On the meta leader: run each schedule's due tick, exactly once cluster-wide.
    pub async fn run_schedules(self: Arc<Self>, cancel: CancellationToken) {
        if self.config.schedules.is_empty() {
            return;
        }
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if !self.shards.leads_meta() {
                continue;
            }
            for schedule in &self.config.schedules {
                if let Err(e) = self.schedule_round(schedule).await {
                    tracing::debug!(schedule = %schedule.spec().name, error = %e, "schedule round");
                }
            }
        }
    }

    pub(super) async fn schedule_round(
        self: &Arc<Self>,
        schedule: &Schedule,
    ) -> Result<(), BackupError> {
        let spec = schedule.spec();
        let catalog = self.catalog();
        let now = now_ms();
        let Some(current) = catalog.schedule(&spec.name).await? else {
            // First sighting: start counting ticks from now.
            let state = ScheduleState {
                last_tick_ms: now,
                ..ScheduleState::default()
            };
            catalog
                .write(vec![catalog.schedule_op(&spec.name, &state, None)?])
                .await?;
            return Ok(());
        };
        let Some(tick) = schedule.due(current.value.last_tick_ms, now) else {
            return Ok(());
        };
        let dest = self.destination(&spec.destination)?;
        let incremental = match self.find_parent(&dest, Some(&spec.name), None).await? {
            Some(parent) => {
                let root = self.chain_root_ms(&dest, &parent).await;
                !schedule.wants_full(root, now)
            }
            None => false,
        };
        let node = self.node;
        let url = spec.destination.clone();
        let name = spec.name.clone();
        let created = catalog
            .create(
                |seq| BackupRecord {
                    schedule: Some(name.clone()),
                    tick_ms: Some(tick),
                    ..BackupRecord::running(seq, now, node, &url, incremental)
                },
                |record| {
                    let state = ScheduleState {
                        last_tick_ms: tick,
                        last_backup: Some(record.id.clone()),
                        last_lag_ms: Some(now.saturating_sub(tick)),
                        ..current.value.clone()
                    };
                    Ok(vec![catalog.schedule_op(
                        &spec.name,
                        &state,
                        Some(current.version),
                    )?])
                },
            )
            .await?;
        let Some(created) = created else {
            // Another node claimed this tick first.
            return Ok(());
        };
        tracing::info!(schedule = %spec.name, id = %created.value.id, tick, incremental, "scheduled backup");
        let this = self.clone();
        let span =
            tracing::info_span!("scheduled_backup", schedule = %spec.name, id = %created.value.id);
        let name = spec.name.clone();
        self.tasks.spawn(
            async move {
                let job = Job {
                    tracked: created,
                    dest,
                };
                let result = match this.run(job, None).await {
                    Ok(_) => "done".to_owned(),
                    Err(e) => format!("failed: {e}"),
                };
                this.note_result(&name, result).await;
            }
            .instrument(span),
        );
        Ok(())
    }

    /// The snapshot time of the full backup a chain starts from.
    pub(super) async fn chain_root_ms(&self, dest: &Destination, tip: &Manifest) -> Option<u64> {
        let mut current = tip.clone();
        for _ in 0..10_000 {
            match &current.parent {
                None => return Some(rfc3339_ms(&current.snapshot.time)),
                Some(p) => current = read_manifest(dest, &p.backup_id).await.ok()?,
            }
        }
        None
    }

    pub(super) async fn note_result(&self, schedule: &str, result: String) {
        for _ in 0..8 {
            let catalog = self.catalog();
            let Ok(Some(current)) = catalog.schedule(schedule).await else {
                return;
            };
            let state = ScheduleState {
                last_result: Some(result.clone()),
                last_finished_ms: Some(now_ms()),
                ..current.value
            };
            let Ok(op) = catalog.schedule_op(schedule, &state, Some(current.version)) else {
                return;
            };
            if matches!(catalog.write(vec![op]).await, Ok(true)) {
                return;
            }
        }
    }
}
