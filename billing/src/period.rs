//! Metering intervals and billing periods, both aligned to UTC.

use time::{Date, Month, OffsetDateTime, Time};

use crate::{BillingError, invalid};

pub const MS_PER_HOUR: i64 = 3_600_000;
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// The length of a metering interval. It divides a UTC day, so intervals
/// line up with hours, days and months (1 h by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IntervalLength(i64);

impl IntervalLength {
    pub const HOUR: Self = Self(MS_PER_HOUR);

    pub fn from_millis(ms: i64) -> Result<Self, BillingError> {
        if ms < 1000 || MS_PER_DAY % ms != 0 || ms % 1000 != 0 {
            return Err(invalid(
                "meter_interval",
                format!("must be whole seconds that divide a day (1h, 15m, 1s…), got {ms} ms"),
            ));
        }
        Ok(Self(ms))
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// The start of the interval holding `t`.
    pub fn floor(self, t: i64) -> i64 {
        t.div_euclid(self.0) * self.0
    }

    /// The first interval start at or after `t`.
    pub fn ceil(self, t: i64) -> i64 {
        let f = self.floor(t);
        if f == t { t } else { f + self.0 }
    }

    pub fn is_aligned(self, t: i64) -> bool {
        t.rem_euclid(self.0) == 0
    }
}

impl Default for IntervalLength {
    fn default() -> Self {
        Self::HOUR
    }
}

/// How long a billing period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeriodLength {
    /// Calendar months, UTC (the default).
    #[default]
    Monthly,
    /// A fixed length in milliseconds, aligned to the epoch.
    Fixed(i64),
}

/// One billing period, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    pub start: i64,
    pub end: i64,
}

impl Period {
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }

    /// `2026-03` for a calendar month, else the RFC 3339 start.
    pub fn label(&self) -> String {
        let (Some(s), Some(e)) = (utc(self.start), utc(self.end)) else {
            return format!("{}..{}", self.start, self.end);
        };
        let month_start = s.day() == 1 && s.time() == Time::MIDNIGHT;
        let next = next_month(s.date());
        if month_start && next.is_some_and(|n| n == e.date()) && e.time() == Time::MIDNIGHT {
            format!("{:04}-{:02}", s.year(), s.month() as u8)
        } else {
            crate::rfc3339(self.start)
        }
    }
}

fn utc(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()
}

fn next_month(d: Date) -> Option<Date> {
    let (y, m) = match d.month() {
        Month::December => (d.year() + 1, Month::January),
        m => (d.year(), m.next()),
    };
    Date::from_calendar_date(y, m, 1).ok()
}

fn ms_of(date: Date) -> i64 {
    (date.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl PeriodLength {
    /// A fixed length must be a whole number of metering intervals.
    pub fn fixed(ms: i64, interval: IntervalLength) -> Result<Self, BillingError> {
        if ms <= 0 || ms % interval.millis() != 0 {
            return Err(invalid(
                "billing_period",
                format!(
                    "must be `month` or a positive multiple of the metering interval ({} ms), got {ms} ms",
                    interval.millis()
                ),
            ));
        }
        Ok(Self::Fixed(ms))
    }

    /// The period holding `t`.
    pub fn period_containing(self, t: i64) -> Result<Period, BillingError> {
        match self {
            Self::Fixed(len) => {
                let start = t.div_euclid(len) * len;
                Ok(Period {
                    start,
                    end: start + len,
                })
            }
            Self::Monthly => {
                let at =
                    utc(t).ok_or_else(|| invalid("time", format!("{t} ms is out of range")))?;
                let first = Date::from_calendar_date(at.year(), at.month(), 1)
                    .map_err(|e| invalid("time", e.to_string()))?;
                let next = next_month(first)
                    .ok_or_else(|| invalid("time", format!("{t} ms is out of range")))?;
                Ok(Period {
                    start: ms_of(first),
                    end: ms_of(next),
                })
            }
        }
    }

    /// `month`, or the fixed length in words.
    pub fn describe(self) -> String {
        match self {
            Self::Monthly => "month".into(),
            Self::Fixed(ms) => format!("{}s", ms / 1000),
        }
    }
}

/// How usage is metered and billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingConfig {
    /// The metering interval (1 h by default).
    pub interval: IntervalLength,
    /// The billing period (a calendar month by default).
    pub period: PeriodLength,
    /// How long after an interval ends it is metered, so that runs whose
    /// start or end was being written as it ended are in (60 s default).
    pub settle_ms: i64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            interval: IntervalLength::HOUR,
            period: PeriodLength::Monthly,
            settle_ms: 60_000,
        }
    }
}

impl BillingConfig {
    /// The end of the last interval that may be metered at `now`.
    pub fn meterable_until(&self, now: i64) -> i64 {
        self.interval.floor(now - self.settle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_calendar_months_in_utc() {
        // 2024-02-15T12:00:00Z
        let t = 1_708_000_000_000;
        let p = PeriodLength::Monthly.period_containing(t).unwrap();
        assert_eq!(p.start, 1_706_745_600_000); // 2024-02-01
        assert_eq!(p.end, 1_709_251_200_000); // 2024-03-01 (leap year)
        assert_eq!(p.label(), "2024-02");
        let dec = PeriodLength::Monthly
            .period_containing(1_703_980_800_000) // 2023-12-31
            .unwrap();
        assert_eq!(dec.end, 1_704_067_200_000); // 2024-01-01
        assert_eq!(dec.label(), "2023-12");
    }

    #[test]
    fn intervals_divide_a_day_and_align() {
        assert!(IntervalLength::from_millis(7_000).is_err());
        assert!(IntervalLength::from_millis(0).is_err());
        let i = IntervalLength::from_millis(900_000).unwrap();
        assert_eq!(i.floor(1_000_000), 900_000);
        assert_eq!(i.ceil(1_000_000), 1_800_000);
        assert_eq!(i.floor(-1), -900_000);
        assert!(PeriodLength::fixed(1_000_000, i).is_err());
        assert_eq!(
            PeriodLength::fixed(1_800_000, i)
                .unwrap()
                .period_containing(2_000_000)
                .unwrap(),
            Period {
                start: 1_800_000,
                end: 3_600_000
            }
        );
    }
}
