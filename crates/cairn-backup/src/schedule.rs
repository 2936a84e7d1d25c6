//! Backup schedules: the `[[backup.schedule]]` entries of a node's config and the
//! arithmetic of their cron ticks.
//!
//! This module owns what a schedule *means*: which names, cron patterns and
//! durations are valid, when a schedule ticks, which tick is due after an outage and
//! whether the next backup of a chain must be a full one. It is pure logic with no IO
//! and no clock of its own: every question takes the time as milliseconds since the
//! Unix epoch (UTC), so the meta leader that runs schedules (the promise:
//! exactly one backup per tick cluster-wide, surviving failover) decides
//! from replicated state — the last tick it ran — and its own clock, and tests decide
//! from fixed numbers.
//!
//! Cron patterns are parsed by the `croner` crate: five fields (`min hour dom mon
//! dow`, seconds are 0) or six with seconds first (`sec min hour dom mon dow`), plus
//! the `@hourly`-style nicknames. A year field is not accepted. Ticks are evaluated
//! in UTC, so there are no daylight-saving gaps or repeats.
//!
//! Durations in the config are humantime strings (`"90m"`, `"24h"`, `"7d"`) and are
//! written back the same way (`"7days"`).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::{CivilDate, CivilDateTime, CivilTime, Cron, CronDateTime, Resolution, Weekday};
use serde::{Deserialize, Serialize};

use crate::retention::Policy;

/// How often a chain gets a new full backup when the config does not say.
pub const DEFAULT_FULL_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest schedule name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// One `[[backup.schedule]]` entry of the node config (TOML), as written:
///
/// ```toml
/// [[backup.schedule]]
/// name = "quarter-hourly"
/// cron = "0 */15 * * * *"      # sec min hour dom mon dow (UTC); 5 fields also work
/// destination = "s3://bucket/prefix"
/// full_every = "24h"           # default "24h"; "never": only the first backup is full
/// keep_last = 48               # optional
/// keep_within = "7d"           # optional
/// ```
///
/// Unknown keys are an error, so a typo is never silently ignored. Call
/// [`ScheduleSpec::validate`] (or [`validate_all`]) before using it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Identifies the schedule (in backup ids, logs and the leader's "last tick"
    /// state): 1 to 64 bytes of `[A-Za-z0-9._-]`.
    pub name: String,
    /// When to take a backup: a cron pattern evaluated in UTC.
    pub cron: String,
    /// Where backups go: a destination URL, as `Destination` understands it.
    pub destination: String,
    /// Take a full backup instead of an incremental one when the current chain's
    /// full backup is at least this old (see [`Schedule::wants_full`]).
    ///
    /// Absent from the config: [`DEFAULT_FULL_EVERY`] (`"24h"`). `None` (written
    /// `full_every = "never"`): only the first backup of a chain is full and the
    /// chain grows for ever. Retention never deletes an ancestor of a kept backup, so
    /// with `"never"` nothing in the chain can ever be deleted; it exists for
    /// destinations whose lifecycle is managed elsewhere.
    #[serde(default = "default_full_every", with = "full_every_serde")]
    pub full_every: Option<Duration>,
    /// Retention: keep at least this many of the newest backups (≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Retention: keep every backup younger than this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration_serde"
    )]
    pub keep_within: Option<Duration>,
}

fn default_full_every() -> Option<Duration> {
    Some(DEFAULT_FULL_EVERY)
}

/// Why a [`ScheduleSpec`] is not valid. Every message names the schedule and the
/// offending field.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The name is empty, too long or has a character outside `[A-Za-z0-9._-]`.
    #[error("backup schedule {name:?}: name: {reason}")]
    InvalidName { name: String, reason: String },
    /// The cron pattern does not parse, or never fires.
    #[error("backup schedule {schedule:?}: cron {cron:?}: {reason}")]
    InvalidCron {
        schedule: String,
        cron: String,
        reason: String,
    },
    /// Another field is out of range.
    #[error("backup schedule {schedule:?}: {field}: {reason}")]
    InvalidField {
        schedule: String,
        field: &'static str,
        reason: &'static str,
    },
    /// Two schedules have the same name (see [`validate_all`]).
    #[error("backup schedule {name:?}: name: used by more than one schedule")]
    DuplicateName { name: String },
}

impl ScheduleSpec {
    /// Checks every field and parses the cron pattern.
    pub fn validate(&self) -> Result<Schedule, ScheduleError> {
        validate_name(&self.name)?;
        let field = |field: &'static str, reason: &'static str| ScheduleError::InvalidField {
            schedule: self.name.clone(),
            field,
            reason,
        };
        let cron_error = |reason: String| ScheduleError::InvalidCron {
            schedule: self.name.clone(),
            cron: self.cron.clone(),
            reason,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&self.cron)
            .map_err(|e| cron_error(e.to_string()))?;
        // A pattern such as "0 0 30 2 *" parses but names no real day.
        if cron
            .find_next_occurrence(&UtcSecond(0), false)
            .ok()
            .is_none()
        {
            return Err(cron_error("never fires (no such date)".to_string()));
        }
        if self.destination.trim().is_empty() {
            return Err(field("destination", "must not be empty"));
        }
        if self.full_every == Some(Duration::ZERO) {
            return Err(field(
                "full_every",
                "must be longer than zero (use \"never\" for no scheduled fulls)",
            ));
        }
        if self.keep_last == Some(0) {
            return Err(field("keep_last", "must be at least 1"));
        }
        if self.keep_within == Some(Duration::ZERO) {
            return Err(field("keep_within", "must be longer than zero"));
        }
        Ok(Schedule {
            spec: self.clone(),
            cron,
        })
    }

    /// The retention policy this schedule asks for (see [`crate::retention::plan`]).
    pub fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_within: self.keep_within,
        }
    }
}

/// Validates every schedule of a config and checks that no two share a name (the
/// name identifies a schedule's state, so a duplicate would make two schedules
/// share one "last tick").
pub fn validate_all(specs: &[ScheduleSpec]) -> Result<Vec<Schedule>, ScheduleError> {
    let mut names = HashSet::new();
    let mut schedules = Vec::with_capacity(specs.len());
    for spec in specs {
        let schedule = spec.validate()?;
        if !names.insert(spec.name.as_str()) {
            return Err(ScheduleError::DuplicateName {
                name: spec.name.clone(),
            });
        }
        schedules.push(schedule);
    }
    Ok(schedules)
}

fn validate_name(name: &str) -> Result<(), ScheduleError> {
    let invalid = |reason: String| ScheduleError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty".to_string()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "is {} bytes long, at most {MAX_NAME_LEN} allowed",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "character {c:?} not allowed (only A-Z, a-z, 0-9, '.', '_' and '-')"
        )));
    }
    Ok(())
}

/// A validated schedule: its spec and its parsed cron pattern.
#[derive(Debug, Clone)]
pub struct Schedule {
    spec: ScheduleSpec,
    cron: Cron,
}

impl Schedule {
    /// The spec this schedule was validated from.
    pub fn spec(&self) -> &ScheduleSpec {
        &self.spec
    }

    /// The first tick strictly after `ms` (milliseconds since the Unix epoch, UTC),
    /// or `None` if there is none that croner can find (past the year 5000).
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        // Ticks fall on whole seconds: a tick `s` seconds is after `ms` exactly when
        // `s > floor(ms / 1000)`.
        let start = UtcSecond(i64::try_from(ms / 1000).ok()?);
        let tick = self.cron.find_next_occurrence(&start, false).ok()?;
        tick.to_ms()
    }

    /// The tick to run now: the newest tick `t` with `last_tick_ms < t <= now_ms`,
    /// or `None` if no tick fell in that range.
    ///
    /// Several missed ticks (an outage, a failover) coalesce into the newest one: the
    /// caller runs once and records the returned tick as its new `last_tick_ms`. The
    /// search goes backward from `now_ms`, so its cost does not depend on how long ago
    /// `last_tick_ms` was. If the clock went back (`now_ms < last_tick_ms`) nothing is
    /// due.
    pub fn due(&self, last_tick_ms: u64, now_ms: u64) -> Option<u64> {
        let now = UtcSecond(i64::try_from(now_ms / 1000).ok()?);
        // `t <= floor(now_ms / 1000)` seconds is exactly `t * 1000 <= now_ms`.
        let tick = self.cron.find_previous_occurrence(&now, true).ok()?;
        tick.to_ms().filter(|&t| t > last_tick_ms)
    }

    /// Whether the next backup must be a full one: there is no chain yet
    /// (`chain_full_ms` is `None`), or `full_every` is set and the chain's full
    /// backup (taken at `chain_full_ms`) is at least `full_every` old at `now_ms`.
    pub fn wants_full(&self, chain_full_ms: Option<u64>, now_ms: u64) -> bool {
        let Some(full_ms) = chain_full_ms else {
            return true;
        };
        match self.spec.full_every {
            None => false,
            Some(every) => {
                let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
                now_ms.saturating_sub(full_ms) >= every_ms
            }
        }
    }
}

/// A UTC instant to the second, through which croner searches.
///
/// croner is generic over [`CronDateTime`]; implementing it here for plain Unix
/// seconds keeps chrono out of the build and time zones out of the answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UtcSecond(i64);

const SECONDS_PER_DAY: i64 = 86_400;

impl UtcSecond {
    /// Milliseconds since the epoch, or `None` before it (or past `u64`).
    fn to_ms(self) -> Option<u64> {
        u64::try_from(self.0).ok()?.checked_mul(1000)
    }

    fn days(self) -> i64 {
        self.0.div_euclid(SECONDS_PER_DAY)
    }
}

impl CronDateTime for UtcSecond {
    fn to_civil(&self) -> CivilDateTime {
        let (year, month, day) = civil_from_days(self.days());
        let secs = self.0.rem_euclid(SECONDS_PER_DAY);
        // Every part is in range by construction (the year for any instant this
        // module builds from a `u64` of milliseconds, and croner stays below 5000).
        CivilDateTime::new(
            CivilDate::from_parts_unchecked(clamp_year(year), month, day),
            CivilTime::from_parts_unchecked(
                (secs / 3600) as u32,
                (secs / 60 % 60) as u32,
                (secs % 60) as u32,
            ),
        )
    }

    fn civil_weekday(&self) -> Weekday {
        // 1970-01-01 was a Thursday, day 4 counting from Sunday.
        Weekday::from_days_from_sunday((self.days() + 4).rem_euclid(7) as u32)
    }

    fn resolve_civil(
        &self,
        civil: CivilDateTime,
    ) -> Result<Resolution<Self>, croner::errors::CronError> {
        let days = days_from_civil(i64::from(civil.year()), civil.month(), civil.day());
        let secs = i64::from(civil.hour()) * 3600
            + i64::from(civil.minute()) * 60
            + i64::from(civil.second());
        Ok(Resolution::Single(UtcSecond(days * SECONDS_PER_DAY + secs)))
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0.checked_add(seconds).map(UtcSecond)
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

fn clamp_year(year: i64) -> i32 {
    i32::try_from(year).unwrap_or(if year < 0 { i32::MIN } else { i32::MAX })
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400); // [0, 399]
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// `Option<Duration>` as an optional humantime string.
mod opt_duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

/// `full_every`: a humantime string, or `"never"` for `None`.
mod full_every_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    const NEVER: &str = "never";

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_str(NEVER),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == NEVER {
            return Ok(None);
        }
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {text:?}: {e} (or \"{NEVER}\")"))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const SEC: u64 = 1000;
    const MIN: u64 = 60 * SEC;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    /// 2024-03-01T00:00:00Z.
    const T0: u64 = 1_709_251_200_000;

    fn spec(name: &str, cron: &str) -> ScheduleSpec {
        ScheduleSpec {
            name: name.to_string(),
            cron: cron.to_string(),
            destination: "file:///backups".to_string(),
            full_every: Some(DEFAULT_FULL_EVERY),
            keep_last: None,
            keep_within: None,
        }
    }

    fn schedule(cron: &str) -> Schedule {
        spec("test", cron).validate().expect("valid spec")
    }

    #[test]
    fn calendar_conversion_matches_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(T0 / DAY, 19_783);
        assert_eq!(UtcSecond(0).civil_weekday(), Weekday::Thursday);
        // 2024-03-01 was a Friday.
        assert_eq!(
            UtcSecond((T0 / SEC) as i64).civil_weekday(),
            Weekday::Friday
        );
        for days in (-800_000..800_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn every_fifteen_minutes_with_seconds() {
        let s = schedule("0 */15 * * * *");
        assert_eq!(s.next_after(T0 - 1), Some(T0));
        assert_eq!(s.next_after(T0), Some(T0 + 15 * MIN));
        assert_eq!(s.next_after(T0 + 1), Some(T0 + 15 * MIN));
        assert_eq!(s.next_after(T0 + 15 * MIN - 1), Some(T0 + 15 * MIN));
        let mut t = T0;
        let mut ticks = Vec::new();
        for _ in 0..5 {
            t = s.next_after(t).expect("a next tick");
            ticks.push(t);
        }
        let want: Vec<u64> = (1..=5).map(|i| T0 + i * 15 * MIN).collect();
        assert_eq!(ticks, want);
        // Across a day boundary.
        assert_eq!(s.next_after(T0 + DAY - 1), Some(T0 + DAY));
    }

    #[test]
    fn five_fields_and_nicknames_work() {
        let s = schedule("*/15 * * * *");
        assert_eq!(s.next_after(T0), Some(T0 + 15 * MIN));
        let s = schedule("30 2 * * *");
        assert_eq!(s.next_after(T0), Some(T0 + 2 * HOUR + 30 * MIN));
        let s = schedule("@daily");
        assert_eq!(s.next_after(T0), Some(T0 + DAY));
        // Day of week: 2024-03-01 is a Friday, the next Monday is 03-04.
        let s = schedule("0 3 * * MON");
        assert_eq!(s.next_after(T0), Some(T0 + 3 * DAY + 3 * HOUR));
        // Leap day.
        let s = schedule("0 0 29 2 *");
        assert_eq!(s.next_after(T0 - DAY - 1), Some(T0 - DAY));
    }

    #[test]
    fn due_coalesces_missed_ticks_into_the_newest() {
        let s = schedule("0 */15 * * * *");
        // Last ran at T0; an outage until T0 + 1h07m: ticks at :15, :30, :45, 1:00
        // were missed, only 1:00 runs.
        assert_eq!(s.due(T0, T0 + HOUR + 7 * MIN), Some(T0 + HOUR));
        // Recording it as the last tick, nothing more is due until 1:15.
        assert_eq!(s.due(T0 + HOUR, T0 + HOUR + 14 * MIN), None);
        assert_eq!(
            s.due(T0 + HOUR, T0 + HOUR + 15 * MIN),
            Some(T0 + HOUR + 15 * MIN)
        );
        // Nothing between the last tick and now.
        assert_eq!(s.due(T0, T0 + 14 * MIN + 59 * SEC), None);
        // Clock went back.
        assert_eq!(s.due(T0 + HOUR, T0), None);
    }

    #[test]
    fn due_at_exact_tick_boundaries() {
        let s = schedule("0 */15 * * * *");
        // t == now is due.
        assert_eq!(s.due(T0 - 1, T0), Some(T0));
        assert_eq!(s.due(T0 - 15 * MIN, T0), Some(T0));
        // t == last is not.
        assert_eq!(s.due(T0, T0), None);
        assert_eq!(s.due(T0, T0 + 999), None);
        // One millisecond before a tick, the tick is not yet due.
        assert_eq!(s.due(T0, T0 + 15 * MIN - 1), None);
        assert_eq!(s.due(T0, T0 + 15 * MIN), Some(T0 + 15 * MIN));
        // Sub-second `now` past a tick.
        assert_eq!(s.due(T0 - 1, T0 + 500), Some(T0));
    }

    #[test]
    fn due_is_fast_when_the_last_tick_is_long_ago() {
        // Per-second ticks over ten years: ~315 million missed ticks.
        let s = schedule("* * * * * *");
        let started = Instant::now();
        let now = T0 + 123_456;
        assert_eq!(s.due(T0 - 3650 * DAY, now), Some(T0 + 123_000));
        assert_eq!(s.due(0, now), Some(T0 + 123_000));
        // A sparse pattern far back.
        let s = schedule("0 0 0 1 1 *");
        assert_eq!(s.due(0, T0), Some(1_704_067_200_000)); // 2024-01-01
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn wants_full_follows_full_every() {
        let s = schedule("0 */15 * * * *");
        assert!(s.wants_full(None, T0));
        assert!(!s.wants_full(Some(T0), T0 + DAY - 1));
        assert!(s.wants_full(Some(T0), T0 + DAY));
        // A chain's full from the future (clock skew) is not old.
        assert!(!s.wants_full(Some(T0 + HOUR), T0));
        let mut never = spec("never", "0 */15 * * * *");
        never.full_every = None;
        let never = never.validate().expect("valid");
        assert!(never.wants_full(None, T0));
        assert!(!never.wants_full(Some(0), T0));
    }

    fn error_of(spec: &ScheduleSpec) -> String {
        spec.validate().expect_err("invalid spec").to_string()
    }

    #[test]
    fn invalid_specs_are_named_errors() {
        let e = error_of(&spec("nightly", "0 0 * *"));
        assert!(e.contains("\"nightly\"") && e.contains("cron"), "{e}");
        let e = error_of(&spec("nightly", "0 61 * * *"));
        assert!(e.contains("\"nightly\"") && e.contains("cron"), "{e}");
        let e = error_of(&spec("nightly", "0 0 0 1 1 * 2030"));
        assert!(e.contains("cron"), "{e}");
        let e = error_of(&spec("nightly", "0 0 30 2 *"));
        assert!(e.contains("never fires"), "{e}");

        let e = error_of(&spec("", "@daily"));
        assert!(e.contains("name") && e.contains("empty"), "{e}");
        let e = error_of(&spec("night ly", "@daily"));
        assert!(e.contains("name") && e.contains("' '"), "{e}");
        let e = error_of(&spec("a/b", "@daily"));
        assert!(e.contains("name") && e.contains("'/'"), "{e}");
        let e = error_of(&spec(&"x".repeat(65), "@daily"));
        assert!(e.contains("name") && e.contains("65 bytes"), "{e}");
        assert!(spec(&"x".repeat(64), "@daily").validate().is_ok());
        assert!(spec("A-z_0.9", "@daily").validate().is_ok());

        let mut s = spec("nightly", "@daily");
        s.keep_last = Some(0);
        let e = error_of(&s);
        assert!(e.contains("\"nightly\"") && e.contains("keep_last"), "{e}");

        let mut s = spec("nightly", "@daily");
        s.keep_within = Some(Duration::ZERO);
        assert!(error_of(&s).contains("keep_within"));

        let mut s = spec("nightly", "@daily");
        s.full_every = Some(Duration::ZERO);
        assert!(error_of(&s).contains("full_every"));

        let mut s = spec("nightly", "@daily");
        s.destination = " ".to_string();
        assert!(error_of(&s).contains("destination"));
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let specs = [
            spec("a", "@daily"),
            spec("b", "@hourly"),
            spec("a", "@hourly"),
        ];
        let e = validate_all(&specs).expect_err("duplicate").to_string();
        assert!(e.contains("\"a\"") && e.contains("more than one"), "{e}");
        assert_eq!(validate_all(&specs[..2]).expect("valid").len(), 2);
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Config {
        schedule: Vec<ScheduleSpec>,
    }

    #[test]
    fn toml_round_trip_with_durations() {
        let text = r#"
            [[schedule]]
            name = "quarter-hourly"
            cron = "0 */15 * * * *"
            destination = "s3://b/p"
            full_every = "24h"
            keep_last = 48
            keep_within = "7d"

            [[schedule]]
            name = "weekly"
            cron = "@weekly"
            destination = "file:///var/backups"

            [[schedule]]
            name = "forever"
            cron = "0 0 * * *"
            destination = "file:///var/backups"
            full_every = "never"
            keep_within = "90m"
        "#;
        let config: Config = toml::from_str(text).expect("parses");
        let [q, w, f] = &config.schedule[..] else {
            panic!("three schedules: {config:?}");
        };
        assert_eq!(q.full_every, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(q.keep_last, Some(48));
        assert_eq!(q.keep_within, Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(w.full_every, Some(DEFAULT_FULL_EVERY));
        assert_eq!((w.keep_last, w.keep_within), (None, None));
        assert_eq!(f.full_every, None);
        assert_eq!(f.keep_within, Some(Duration::from_secs(90 * 60)));
        assert_eq!(
            q.policy(),
            Policy {
                keep_last: Some(48),
                keep_within: Some(Duration::from_secs(7 * 24 * 3600)),
            }
        );
        assert!(validate_all(&config.schedule).is_ok());

        let written = toml::to_string(&config).expect("serializes");
        assert!(written.contains("keep_within = \"7days\""), "{written}");
        assert!(written.contains("full_every = \"1day\""), "{written}");
        assert!(written.contains("full_every = \"never\""), "{written}");
        let back: Config = toml::from_str(&written).expect("parses back");
        assert_eq!(back, config);
    }

    #[test]
    fn bad_toml_fields_are_clear_errors() {
        let base = "name = \"n\"\ncron = \"@daily\"\ndestination = \"d\"\n";
        let e = toml::from_str::<ScheduleSpec>(&format!("{base}keep_lst = 3\n"))
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("unknown field") && e.contains("keep_lst"), "{e}");
        let e = toml::from_str::<ScheduleSpec>(&format!("{base}keep_within = \"7 parsecs\"\n"))
            .expect_err("bad duration")
            .to_string();
        assert!(e.contains("keep_within") && e.contains("7 parsecs"), "{e}");
        let e = toml::from_str::<ScheduleSpec>(&format!("{base}full_every = 3\n"))
            .expect_err("not a string")
            .to_string();
        assert!(e.contains("full_every"), "{e}");
        let e = toml::from_str::<ScheduleSpec>("name = \"n\"\ncron = \"@daily\"\n")
            .expect_err("missing destination")
            .to_string();
        assert!(e.contains("destination"), "{e}");
    }
}
