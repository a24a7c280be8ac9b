//! Which complete sets a retention policy keeps, with restic's `forget` semantics.
//!
//! Sets are walked newest first. `keep_last N` keeps the N newest. `hourly N` keeps the
//! newest set of each of the last N hours that have sets (not of the last N clock hours);
//! likewise daily, weekly (ISO weeks) and monthly, all in UTC. Like restic (>= 0.16), when a
//! bucket policy still has counts left at the oldest set, that oldest set is kept too, so a
//! young repository keeps its full history. A set may be kept for several reasons; all are
//! reported. With no policy at all, everything is kept (as restic refuses to forget).
//! The newest set is always kept, whatever the policy says.

use drctl_core::config::Retention;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Serialize;

/// The verdict for one set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub time: Timestamp,
    pub keep: bool,
    /// Why it is kept: `last`, `hourly`, `daily`, `weekly`, `monthly`, `newest`, `no policy`.
    pub reasons: Vec<String>,
}

type Bucker = fn(Timestamp) -> i64;

fn civil(t: Timestamp) -> jiff::civil::DateTime {
    t.to_zoned(TimeZone::UTC).datetime()
}

fn hour_bucket(t: Timestamp) -> i64 {
    let d = civil(t);
    ((d.year() as i64 * 100 + d.month() as i64) * 100 + d.day() as i64) * 100 + d.hour() as i64
}
fn day_bucket(t: Timestamp) -> i64 {
    let d = civil(t);
    (d.year() as i64 * 100 + d.month() as i64) * 100 + d.day() as i64
}
fn week_bucket(t: Timestamp) -> i64 {
    let w = civil(t).date().iso_week_date();
    w.year() as i64 * 100 + w.week() as i64
}
fn month_bucket(t: Timestamp) -> i64 {
    let d = civil(t);
    d.year() as i64 * 100 + d.month() as i64
}

/// Apply `policy` to complete sets `(id, time)` in any order; returns one decision per set,
/// newest first.
pub fn apply(sets: &[(String, Timestamp)], policy: &Retention) -> Vec<Decision> {
    let mut list: Vec<&(String, Timestamp)> = sets.iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let none = [
        policy.keep_last,
        policy.hourly,
        policy.daily,
        policy.weekly,
        policy.monthly,
    ]
    .iter()
    .all(|c| c.unwrap_or(0) == 0);
    struct Bucket {
        reason: &'static str,
        count: u32,
        bucker: Option<Bucker>,
        last: Option<i64>,
    }
    let mut buckets: Vec<Bucket> = [
        ("last", policy.keep_last, None),
        ("hourly", policy.hourly, Some(hour_bucket as Bucker)),
        ("daily", policy.daily, Some(day_bucket as Bucker)),
        ("weekly", policy.weekly, Some(week_bucket as Bucker)),
        ("monthly", policy.monthly, Some(month_bucket as Bucker)),
    ]
    .into_iter()
    .map(|(reason, count, bucker)| Bucket {
        reason,
        count: count.unwrap_or(0),
        bucker,
        last: None,
    })
    .collect();
    let n = list.len();
    list.into_iter()
        .enumerate()
        .map(|(nr, (id, time))| {
            let mut reasons = Vec::new();
            if nr == 0 {
                reasons.push("newest".to_string());
            }
            if none {
                reasons.push("no policy".to_string());
            }
            for b in buckets.iter_mut() {
                if b.count == 0 {
                    continue;
                }
                let val = b.bucker.map_or(nr as i64, |f| f(*time));
                let oldest = b.bucker.is_some() && nr == n - 1;
                if b.last != Some(val) || oldest {
                    b.last = Some(val);
                    b.count -= 1;
                    reasons.push(b.reason.to_string());
                }
            }
            Decision {
                id: id.clone(),
                time: *time,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}
