//! Wall-clock schedules in an IANA time zone: business hours of an account, working hours of a
//! user, time windows of a condition. Every check converts the instant it is given to local time
//! first, so daylight-saving changes move the UTC instants, never the wall-clock hours.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};

/// Minutes since local midnight, `0..=1440`.
pub type Minute = u16;

pub const DAY_KEYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

pub fn day_key(day: Weekday) -> &'static str {
    DAY_KEYS[day.num_days_from_monday() as usize]
}

pub fn parse_day(key: &str) -> Option<Weekday> {
    let index = DAY_KEYS.iter().position(|k| *k == key)?;
    Some(Weekday::try_from(index as u8).expect("seven days"))
}

/// `HH:MM`, with `24:00` only where `allow_end_of_day`.
pub fn parse_minute(text: &str, allow_end_of_day: bool) -> Option<Minute> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if allow_end_of_day => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

pub fn format_minute(minute: Minute) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// A half-open range of the day, `start..end`, e.g. `09:00-17:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start: Minute,
    pub end: Minute,
}

impl TimeRange {
    /// Parses `HH:MM-HH:MM` where the end is after the start (`24:00` ends the day).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` is not a range like 09:00-17:00"))?;
        let start = parse_minute(start.trim(), false)
            .ok_or_else(|| format!("`{}` is not a time like 09:00", start.trim()))?;
        let end = parse_minute(end.trim(), true)
            .ok_or_else(|| format!("`{}` is not a time like 17:00", end.trim()))?;
        if end <= start {
            return Err(format!(
                "`{text}` ends before it starts (a range cannot cross midnight: split it in two days)"
            ));
        }
        Ok(Self { start, end })
    }

    pub fn contains(&self, minute: Minute) -> bool {
        self.start <= minute && minute < self.end
    }
}

impl std::fmt::Display for TimeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            format_minute(self.start),
            format_minute(self.end)
        )
    }
}

impl Serialize for TimeRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Open ranges for each day of the week, Monday first; a day without ranges is closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeeklyHours {
    pub days: [Vec<TimeRange>; 7],
}

impl WeeklyHours {
    pub fn on(&self, day: Weekday) -> &[TimeRange] {
        &self.days[day.num_days_from_monday() as usize]
    }

    /// The same ranges every day of the week (handy in tests and defaults).
    pub fn every_day(ranges: &[TimeRange]) -> Self {
        Self {
            days: std::array::from_fn(|_| ranges.to_vec()),
        }
    }

    /// The same ranges Monday to Friday; the weekend closed.
    pub fn weekdays(ranges: &[TimeRange]) -> Self {
        Self {
            days: std::array::from_fn(|i| if i < 5 { ranges.to_vec() } else { Vec::new() }),
        }
    }
}

impl Serialize for WeeklyHours {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        for (key, ranges) in DAY_KEYS.iter().zip(&self.days) {
            if !ranges.is_empty() {
                map.serialize_entry(key, ranges)?;
            }
        }
        map.end()
    }
}

/// Weekly hours in a time zone, closed on the listed local dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub time_zone: Tz,
    pub week: WeeklyHours,
    pub holidays: Vec<NaiveDate>,
}

/// What a schedule says about one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Openness {
    Open,
    /// Closed; the text says the local time, e.g. `Europe/Madrid Tue 21:40`.
    Closed(String),
    Holiday(NaiveDate),
}

impl Schedule {
    pub fn new(time_zone: Tz, week: WeeklyHours) -> Self {
        Self {
            time_zone,
            week,
            holidays: Vec::new(),
        }
    }

    pub fn at(&self, now: DateTime<Utc>) -> Openness {
        let local = now.with_timezone(&self.time_zone);
        let date = local.date_naive();
        if self.holidays.contains(&date) {
            return Openness::Holiday(date);
        }
        let minute = (local.hour() * 60 + local.minute()) as Minute;
        if self
            .week
            .on(local.weekday())
            .iter()
            .any(|r| r.contains(minute))
        {
            Openness::Open
        } else {
            Openness::Closed(local_label(self.time_zone, now))
        }
    }

    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.at(now) == Openness::Open
    }

    /// How long the schedule is open between `from` and `until` (zero if `until` is earlier).
    /// Looks at most a year back.
    pub fn open_between(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> Duration {
        if until <= from {
            return Duration::zero();
        }
        let from = from.max(until - Duration::days(366));
        let first = from.with_timezone(&self.time_zone).date_naive() - Duration::days(1);
        let last = until.with_timezone(&self.time_zone).date_naive();
        let mut open = Duration::zero();
        let mut date = first;
        while date <= last {
            if !self.holidays.contains(&date) {
                for range in self.week.on(date.weekday()) {
                    let start = self.instant(date, range.start);
                    let end = self.instant(date, range.end);
                    let (start, end) = (start.max(from), end.min(until));
                    if end > start {
                        open += end - start;
                    }
                }
            }
            date += Duration::days(1);
        }
        open
    }

    /// The instant a local wall-clock minute of a date happens; a minute skipped by a
    /// daylight-saving jump maps to the first instant after the jump, a repeated one to the first.
    fn instant(&self, date: NaiveDate, minute: Minute) -> DateTime<Utc> {
        let mut local: NaiveDateTime =
            date.and_hms_opt(0, 0, 0).expect("midnight") + Duration::minutes(i64::from(minute));
        for _ in 0..16 {
            match self.time_zone.from_local_datetime(&local) {
                LocalResult::Single(t) => return t.with_timezone(&Utc),
                LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
                LocalResult::None => local += Duration::minutes(15),
            }
        }
        // No zone skips four hours; fall back to reading the wall clock as UTC.
        Utc.from_utc_datetime(&local)
    }
}

/// `Europe/Madrid 21:40`: how a reason names a local time.
pub fn local_label(time_zone: Tz, now: DateTime<Utc>) -> String {
    format!(
        "{} {}",
        time_zone.name(),
        now.with_timezone(&time_zone).format("%H:%M")
    )
}

/// A daily window of wall-clock time on some days; `from > until` crosses midnight (the part
/// after midnight belongs to the day the window started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    pub days: Vec<Weekday>,
    pub from: Minute,
    pub until: Minute,
}

impl TimeWindow {
    pub fn contains(&self, time_zone: Tz, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&time_zone);
        let minute = (local.hour() * 60 + local.minute()) as Minute;
        let day = local.weekday();
        let on = |d: Weekday| self.days.is_empty() || self.days.contains(&d);
        if self.from < self.until {
            on(day) && self.from <= minute && minute < self.until
        } else {
            (on(day) && minute >= self.from) || (on(day.pred()) && minute < self.until)
        }
    }
}

impl Serialize for TimeWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        if !self.days.is_empty() {
            let days: Vec<&str> = self.days.iter().map(|d| day_key(*d)).collect();
            map.serialize_entry("days", &days)?;
        }
        map.serialize_entry("from", &format_minute(self.from))?;
        map.serialize_entry("until", &format_minute(self.until))?;
        map.end()
    }
}
