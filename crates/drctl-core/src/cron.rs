//! Five-field cron expressions (UTC): one grammar for validation (`drctl.yml` schedules)
//! and for `drctl schedule`'s due times.

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

/// A five-field cron expression (minute hour day-of-month month day-of-week), in UTC:
/// `*`, numbers, ranges `a-b`, lists and steps (`*/15`, `a-b/n`, `a/n`); what
/// [`crate::config::check_cron`] accepts, since it parses with this. Day-of-week 0 and 7 are Sunday. When both day fields
/// are restricted (neither starts with `*`), a day matches either (as in Vixie cron).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_star: bool,
    weekdays_star: bool,
}

fn cron_field(expr: &str, name: &str, f: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let num = |x: &str| -> Result<u32, String> {
        match x.parse::<u32>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(format!(
                "bad {name} `{x}` in cron expression `{expr}`: expected {lo} to {hi}"
            )),
        }
    };
    let mut bits = 0u64;
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(n) if n > 0 => (r, Some(n)),
                _ => return Err(format!("bad {name} step `{s}` in cron expression `{expr}`")),
            },
            None => (part, None),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a)?, num(b)?)
        } else {
            let a = num(range)?;
            // `5/15` means 5, 20, 35, 50: from 5 to the end.
            (a, if step.is_some() { hi } else { a })
        };
        if a > b {
            return Err(format!(
                "bad {name} range `{range}` in cron expression `{expr}`: it runs backwards"
            ));
        }
        let mut x = a;
        while x <= b {
            bits |= 1 << x;
            // A step past the range ends it (and a huge one cannot overflow).
            match x.checked_add(step.unwrap_or(1)) {
                Some(n) => x = n,
                None => break,
            }
        }
    }
    Ok(bits)
}

/// A timestamp as a UTC civil date and time.
pub fn civil(ts: Timestamp) -> DateTime {
    ts.to_zoned(TimeZone::UTC).datetime()
}

/// A UTC civil date and time as a timestamp.
pub fn instant(dt: DateTime) -> Option<Timestamp> {
    dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "bad cron expression `{expr}`: a cron expression has five fields: minute hour day-of-month month day-of-week, like `0 */6 * * *`"
            ));
        }
        let mut weekdays = cron_field(expr, "day-of-week", fields[4], 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Cron {
            minutes: cron_field(expr, "minute", fields[0], 0, 59)?,
            hours: cron_field(expr, "hour", fields[1], 0, 23)?,
            days: cron_field(expr, "day-of-month", fields[2], 1, 31)?,
            months: cron_field(expr, "month", fields[3], 1, 12)?,
            weekdays,
            days_star: fields[2].starts_with('*'),
            weekdays_star: fields[4].starts_with('*'),
        })
    }

    fn day_matches(&self, d: jiff::civil::Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether a minute (seconds ignored) is a due time.
    pub fn matches(&self, ts: Timestamp) -> bool {
        let t = civil(ts);
        self.months & (1 << t.month()) != 0
            && self.day_matches(t.date())
            && self.hours & (1 << t.hour()) != 0
            && self.minutes & (1 << t.minute()) != 0
    }

    /// The first due time strictly after `ts`; `None` when there is none in the next ten
    /// years (`0 0 30 2 *`).
    pub fn next_after(&self, ts: Timestamp) -> Option<Timestamp> {
        let c = civil(ts);
        let mut t = c
            .date()
            .to_datetime(Time::new(c.hour(), c.minute(), 0, 0).ok()?)
            .checked_add(Span::new().minutes(1))
            .ok()?;
        let last_year = t.year().saturating_add(10);
        while t.year() <= last_year {
            if self.months & (1 << t.month()) == 0 {
                t = t
                    .date()
                    .first_of_month()
                    .checked_add(Span::new().months(1))
                    .ok()?
                    .to_datetime(Time::midnight());
            } else if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(Time::midnight());
            } else if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .date()
                    .to_datetime(Time::new(t.hour(), 0, 0, 0).ok()?)
                    .checked_add(Span::new().hours(1))
                    .ok()?;
            } else if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(Span::new().minutes(1)).ok()?;
            } else {
                return instant(t);
            }
        }
        None
    }

    /// The newest due time in `(after, now]` and how many there were (counted up to a
    /// cap: this only goes into a log line).
    pub fn latest_in(&self, after: Timestamp, now: Timestamp) -> Option<(Timestamp, u64)> {
        let mut t = after;
        let mut n = 0u64;
        // Start counting at most 40 days back: enough to say "many".
        if let Ok(floor) = now.checked_sub(Span::new().hours(24 * 40)) {
            if t < floor {
                t = floor;
                n = 1;
            }
        }
        let mut newest = None;
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            newest = Some(next);
            n += 1;
            t = next;
        }
        newest.map(|at| (at, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(expr: &str, from: &str) -> String {
        Cron::parse(expr)
            .unwrap()
            .next_after(ts(from))
            .map(|t| t.to_string())
            .unwrap_or_else(|| "never".into())
    }

    #[test]
    fn cron_next_due_times() {
        assert_eq!(
            next("* * * * *", "2026-03-01T10:00:30Z"),
            "2026-03-01T10:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2026-03-01T10:00:00Z"),
            "2026-03-01T10:01:00Z"
        );
        assert_eq!(
            next("0 * * * *", "2026-03-01T10:00:00Z"),
            "2026-03-01T11:00:00Z"
        );
        assert_eq!(
            next("*/15 9-17 * * 1-5", "2026-03-06T17:50:00Z"),
            "2026-03-09T09:00:00Z",
            "Friday evening to Monday morning"
        );
        assert_eq!(
            next("30 2 1 * *", "2026-12-15T00:00:00Z"),
            "2027-01-01T02:30:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(next("0 0 30 2 *", "2026-03-01T00:00:00Z"), "never");
        // Both day fields restricted: either matches (the 13th, or a Friday).
        assert_eq!(
            next("0 12 13 * 5", "2026-03-01T00:00:00Z"),
            "2026-03-06T12:00:00Z"
        );
        // One restricted: both must (Sundays only; 7 is Sunday too).
        assert_eq!(
            next("0 12 * * 7", "2026-03-01T12:00:00Z"),
            "2026-03-08T12:00:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-03-01T10:26:00Z"),
            "2026-03-01T10:45:00Z"
        );
        assert_eq!(
            next("0,30 23 31 12 *", "2026-12-31T23:00:00Z"),
            "2026-12-31T23:30:00Z"
        );
    }

    #[test]
    fn cron_rejects_what_check_cron_rejects_and_backward_ranges() {
        assert!(Cron::parse("0 24 * * *").unwrap_err().contains("hour"));
        assert!(Cron::parse("* * *").is_err());
        assert!(Cron::parse("*/0 * * * *").is_err());
        assert_eq!(
            Cron::parse("*/4294967295 * * * *").unwrap(),
            Cron::parse("0 * * * *").unwrap()
        );
        assert!(Cron::parse("5-1 * * * *")
            .unwrap_err()
            .contains("runs backwards"));
        assert!(Cron::parse("0 0 0 * *")
            .unwrap_err()
            .contains("day-of-month"));
    }

    #[test]
    fn latest_missed_due_time() {
        let c = Cron::parse("0 * * * *").unwrap();
        assert_eq!(
            c.latest_in(ts("2026-03-01T10:00:00Z"), ts("2026-03-01T13:30:00Z")),
            Some((ts("2026-03-01T13:00:00Z"), 3))
        );
        assert_eq!(
            c.latest_in(ts("2026-03-01T10:00:00Z"), ts("2026-03-01T10:59:00Z")),
            None
        );
    }
}
