//! GHL allows each app, per location, 100 requests in any 10 seconds and 200,000 a day, and
//! answers 429 beyond (`ghl-api.md` §7). whatsnap paces itself so that it never provokes a 429:
//! a sliding window per location, the daily count, and what GHL's `X-RateLimit-*` headers and
//! 429s say. Locations never share a budget, and [`RateLimiter::try_acquire`] tells a scheduler
//! how long one location must wait so that it can serve another meanwhile: a busy location
//! cannot starve the others.
//!
//! The windows are one process's memory while it does the GHL work; [`RateLimiter::saved`] and
//! [`RateLimiter::resume`] carry them, in wall-clock time, to the replica that takes the work
//! over, so that a handover does not start GHL's window afresh.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use whatsnap_events::LocationId;

/// GHL's published limits, per app and location.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub burst_max: u32,
    pub burst_window: Duration,
    pub daily_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            burst_max: 100,
            burst_window: Duration::from_secs(10),
            daily_max: 200_000,
        }
    }
}

/// What GHL's rate-limit headers said on a response (each is optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    /// `X-RateLimit-Remaining`: requests left in the current burst window.
    pub burst_remaining: Option<u32>,
    /// `X-RateLimit-Daily-Remaining`.
    pub daily_remaining: Option<u32>,
}

impl Observed {
    /// Reads the headers GHL sends (names compared case-insensitively).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut observed = Self::default();
        for (name, value) in headers {
            let value = value.trim().parse().ok();
            if name.eq_ignore_ascii_case("x-ratelimit-remaining") {
                observed.burst_remaining = value;
            } else if name.eq_ignore_ascii_case("x-ratelimit-daily-remaining") {
                observed.daily_remaining = value;
            }
        }
        observed
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    /// The location may send again after this long.
    #[error("the location must wait {0:?} before its next GHL request")]
    Wait(Duration),
    /// The location has used its daily allowance; it resets after this long.
    #[error("the location used its daily GHL allowance; it resets in {0:?}")]
    DailyCap(Duration),
}

#[derive(Debug)]
struct Bucket {
    /// When each request of the current window went out.
    sent: VecDeque<Instant>,
    day_started: Instant,
    daily_used: u32,
    /// No request before this (a 429, or GHL saying the window is used up).
    blocked_until: Option<Instant>,
    /// When GHL's answers came back, the last window's: an answer comes after its request
    /// reached GHL, so it bounds when GHL counted it.
    answered: VecDeque<Instant>,
    /// Changed since [`RateLimiter::saved`] last took it.
    unsaved: bool,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            sent: VecDeque::new(),
            day_started: now,
            daily_used: 0,
            blocked_until: None,
            answered: VecDeque::new(),
            unsaved: true,
        }
    }
}

/// One location's pacing as another process can take it up: times in milliseconds since the
/// Unix epoch, as every replica's clock reads them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedWindow {
    /// When each request of the current burst window went out.
    pub sent_ms: Vec<i64>,
    /// When GHL answered, over the last window.
    pub answered_ms: Vec<i64>,
    /// No request before this.
    pub blocked_until_ms: Option<i64>,
    pub day_started_ms: i64,
    pub daily_used: u32,
}

impl SavedWindow {
    /// How many requests are left of the day's allowance at `now_ms`, and when it resets.
    pub fn daily_left(&self, limits: Limits, now_ms: i64) -> (u32, Duration) {
        let elapsed =
            Duration::from_millis(now_ms.saturating_sub(self.day_started_ms).max(0) as u64);
        match elapsed < DAY {
            true => (
                limits.daily_max.saturating_sub(self.daily_used),
                DAY - elapsed,
            ),
            false => (limits.daily_max, DAY),
        }
    }
}

/// Converts between this process's monotonic clock and the wall clock, at one moment.
#[derive(Clone, Copy)]
struct Clocks {
    now: Instant,
    now_ms: i64,
}

impl Clocks {
    fn read(now_ms: i64) -> Self {
        Self {
            now: Instant::now(),
            now_ms,
        }
    }

    fn to_ms(self, at: Instant) -> i64 {
        match at.checked_duration_since(self.now) {
            Some(ahead) => self.now_ms + ahead.as_millis() as i64,
            None => self.now_ms - self.now.duration_since(at).as_millis() as i64,
        }
    }

    /// A wall-clock time as this process's instant; times before this process's clock began
    /// are taken as its start (they are older than any window that matters).
    fn to_instant(self, at_ms: i64) -> Instant {
        let offset = Duration::from_millis(at_ms.abs_diff(self.now_ms));
        match at_ms >= self.now_ms {
            true => self.now + offset,
            false => self.now.checked_sub(offset).unwrap_or(self.now),
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Drops the times, oldest first, that are a whole `window` old at `now`.
fn forget_before_window(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|at| now.duration_since(*at) >= window)
    {
        times.pop_front();
    }
}

/// Pacing of GHL requests, per location.
#[derive(Debug, Default)]
pub struct RateLimiter {
    limits: Limits,
    buckets: Mutex<HashMap<LocationId, Bucket>>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buckets: Mutex::default(),
        }
    }

    /// Reserves a request for `location` now, or says how long it must wait.
    pub fn try_acquire(&self, location: &LocationId) -> Result<(), Exhausted> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let bucket = buckets
            .entry(location.clone())
            .or_insert_with(|| Bucket::new(now));
        if now.duration_since(bucket.day_started) >= DAY {
            bucket.day_started = now;
            bucket.daily_used = 0;
        }
        if bucket.daily_used >= self.limits.daily_max {
            return Err(Exhausted::DailyCap(
                DAY.saturating_sub(now.duration_since(bucket.day_started)),
            ));
        }
        if let Some(until) = bucket.blocked_until {
            if until > now {
                return Err(Exhausted::Wait(until - now));
            }
            bucket.blocked_until = None;
        }
        forget_before_window(&mut bucket.sent, now, self.limits.burst_window);
        if bucket.sent.len() >= self.limits.burst_max as usize {
            let oldest = *bucket.sent.front().expect("window is full");
            return Err(Exhausted::Wait(
                self.limits.burst_window - now.duration_since(oldest),
            ));
        }
        bucket.sent.push_back(now);
        bucket.daily_used += 1;
        bucket.unsaved = true;
        Ok(())
    }

    /// How many requests `location` has left of today's allowance, and when it resets.
    pub fn daily_left(&self, location: &LocationId) -> (u32, Duration) {
        let now = Instant::now();
        let buckets = self.buckets.lock().expect("rate limiter lock");
        match buckets.get(location) {
            Some(bucket) if now.duration_since(bucket.day_started) < DAY => (
                self.limits.daily_max.saturating_sub(bucket.daily_used),
                DAY.saturating_sub(now.duration_since(bucket.day_started)),
            ),
            _ => (self.limits.daily_max, DAY),
        }
    }

    /// GHL's limits this limiter keeps to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// For each location seen: the requests of the current burst window and of the day.
    pub fn usage(&self) -> Vec<(LocationId, u32, u32)> {
        let now = Instant::now();
        let buckets = self.buckets.lock().expect("rate limiter lock");
        buckets
            .iter()
            .map(|(location, bucket)| {
                let in_window = bucket
                    .sent
                    .iter()
                    .filter(|at| now.duration_since(**at) < self.limits.burst_window)
                    .count();
                let today = match now.duration_since(bucket.day_started) < DAY {
                    true => bucket.daily_used,
                    false => 0,
                };
                (location.clone(), in_window as u32, today)
            })
            .collect()
    }

    /// Waits until a request for `location` may go, and reserves it; fails only when the
    /// location's daily allowance is used up.
    pub async fn acquire(&self, location: &LocationId) -> Result<(), Exhausted> {
        loop {
            match self.try_acquire(location) {
                Ok(()) => return Ok(()),
                Err(Exhausted::Wait(wait)) => tokio::time::sleep(wait).await,
                Err(daily) => return Err(daily),
            }
        }
    }

    /// Takes in what GHL's headers said after a response. With nothing left in the window, no
    /// request goes before GHL's window has room again: when this limiter's answers account for
    /// the whole window, once the oldest of them is a window old (GHL counted that request
    /// before it answered it, so the slot is free by then; each of the window's requests was
    /// answered after it was counted, hence the `burst_max`th latest answer is no earlier than
    /// the oldest request GHL still counts); else, as GHL counts requests this limiter did not
    /// make, a whole window from now. The daily count follows GHL's.
    pub fn observe(&self, location: &LocationId, observed: Observed) {
        let now = Instant::now();
        let window = self.limits.burst_window;
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let bucket = buckets
            .entry(location.clone())
            .or_insert_with(|| Bucket::new(now));
        forget_before_window(&mut bucket.answered, now, window);
        bucket.answered.push_back(now);
        bucket.unsaved = true;
        if observed.burst_remaining == Some(0) {
            let max = self.limits.burst_max as usize;
            let free_at = match bucket.answered.len().checked_sub(max) {
                Some(oldest) => bucket.answered[oldest] + window,
                None => now + window,
            };
            bucket.blocked_until = Some(free_at.max(now));
        }
        if let Some(remaining) = observed.daily_remaining {
            bucket.daily_used = self.limits.daily_max.saturating_sub(remaining);
        }
    }

    /// GHL answered 429: no request for `location` before `retry_after` (or a whole window).
    pub fn too_many_requests(&self, location: &LocationId, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let bucket = buckets
            .entry(location.clone())
            .or_insert_with(|| Bucket::new(now));
        bucket.blocked_until = Some(now + retry_after.unwrap_or(self.limits.burst_window));
        bucket.unsaved = true;
    }

    /// The windows of the locations whose pacing changed since the last call (every location
    /// with `all`), as of `now_ms` on the wall clock, for the replica that takes the GHL work
    /// over. Taking them marks them saved.
    pub fn saved(&self, now_ms: i64, all: bool) -> Vec<(LocationId, SavedWindow)> {
        self.saved_of(now_ms, all, |_| true)
    }

    /// As [`Self::saved`], of the locations `which` picks only (those of one part of the GHL
    /// work); the others stay as they were, unsaved or not.
    pub fn saved_of(
        &self,
        now_ms: i64,
        all: bool,
        which: impl Fn(&LocationId) -> bool,
    ) -> Vec<(LocationId, SavedWindow)> {
        let clocks = Clocks::read(now_ms);
        let window = self.limits.burst_window;
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        buckets
            .iter_mut()
            .filter(|(location, bucket)| (all || bucket.unsaved) && which(location))
            .map(|(location, bucket)| {
                bucket.unsaved = false;
                forget_before_window(&mut bucket.sent, clocks.now, window);
                forget_before_window(&mut bucket.answered, clocks.now, window);
                let saved = SavedWindow {
                    sent_ms: bucket.sent.iter().map(|at| clocks.to_ms(*at)).collect(),
                    answered_ms: bucket.answered.iter().map(|at| clocks.to_ms(*at)).collect(),
                    blocked_until_ms: bucket.blocked_until.map(|at| clocks.to_ms(at)),
                    day_started_ms: clocks.to_ms(bucket.day_started),
                    daily_used: bucket.daily_used,
                };
                (location.clone(), saved)
            })
            .collect()
    }

    /// Takes up the windows another process saved, as of `now_ms` on the wall clock, in place of
    /// what this one remembers: the process that saved them did the GHL work since.
    ///
    /// `unknown_since_save`: the saving process stopped without saying it had saved its last
    /// requests (it died); those it made after its last save may still count in GHL's window.
    /// Each location that had requests in its saved window then waits a whole window from now,
    /// when whatever the dead process sent has left GHL's window too.
    pub fn resume(
        &self,
        saved: Vec<(LocationId, SavedWindow)>,
        now_ms: i64,
        unknown_since_save: bool,
    ) {
        let clocks = Clocks::read(now_ms);
        let window = self.limits.burst_window;
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        for (location, saved) in saved {
            let times = |ms: &[i64]| -> VecDeque<Instant> {
                let mut times: VecDeque<_> = ms.iter().map(|at| clocks.to_instant(*at)).collect();
                times.make_contiguous().sort();
                forget_before_window(&mut times, clocks.now, window);
                times
            };
            let sent = times(&saved.sent_ms);
            let mut blocked_until = saved
                .blocked_until_ms
                .map(|at| clocks.to_instant(at))
                .filter(|at| *at > clocks.now);
            if unknown_since_save && !sent.is_empty() {
                blocked_until = Some(clocks.now + window);
            }
            let bucket = Bucket {
                sent,
                day_started: clocks.to_instant(saved.day_started_ms),
                daily_used: saved.daily_used,
                blocked_until,
                answered: times(&saved.answered_ms),
                unsaved: false,
            };
            buckets.insert(location, bucket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(name: &str) -> LocationId {
        LocationId::parse(name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_location_sends_100_at_once_then_waits_for_the_window() {
        let limiter = RateLimiter::default();
        let busy = location("busy");
        let started = Instant::now();
        for _ in 0..100 {
            limiter.acquire(&busy).await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(
            limiter.try_acquire(&busy),
            Err(Exhausted::Wait(Duration::from_secs(10)))
        );
        limiter.acquire(&busy).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_no_burst_exceeds_100_in_any_10_seconds() {
        let limiter = RateLimiter::default();
        let loc = location("loc");
        let mut sent = Vec::new();
        for _ in 0..350 {
            limiter.acquire(&loc).await.unwrap();
            sent.push(Instant::now());
            tokio::time::sleep(Duration::from_millis(13)).await;
        }
        for (i, at) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|later| later.duration_since(*at) < Duration::from_secs(10))
                .count();
            assert!(
                in_window <= 100,
                "{in_window} requests within 10 s from request {i}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_location_does_not_hold_back_another() {
        let limiter = RateLimiter::default();
        let (busy, quiet) = (location("busy"), location("quiet"));
        for _ in 0..100 {
            limiter.try_acquire(&busy).unwrap();
        }
        assert!(matches!(
            limiter.try_acquire(&busy),
            Err(Exhausted::Wait(_))
        ));
        limiter.try_acquire(&quiet).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn ghls_headers_and_429s_are_obeyed() {
        let limiter = RateLimiter::default();
        let loc = location("loc");
        limiter.try_acquire(&loc).unwrap();
        let observed = Observed::from_headers([
            ("X-RateLimit-Remaining", "0"),
            ("x-ratelimit-daily-remaining", "150000"),
            ("X-RateLimit-Max", "100"),
        ]);
        limiter.observe(&loc, observed);
        assert_eq!(
            limiter.try_acquire(&loc),
            Err(Exhausted::Wait(Duration::from_secs(10)))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        limiter.try_acquire(&loc).unwrap();

        limiter.too_many_requests(&loc, Some(Duration::from_secs(3)));
        let started = Instant::now();
        limiter.acquire(&loc).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    /// Requests paced through the window: when GHL says it is used up, the next request waits
    /// only until the oldest answer of the window is a window old, not a whole window from the
    /// last answer (which would leave GHL's allowance unused for most of a window each time).
    #[tokio::test(start_paused = true)]
    async fn a_used_up_window_frees_a_slot_once_its_oldest_answer_is_a_window_old() {
        let limiter = RateLimiter::default();
        let loc = location("loc");
        let started = Instant::now();
        for n in 0..100u32 {
            limiter.try_acquire(&loc).unwrap();
            tokio::time::advance(Duration::from_millis(10)).await;
            let remaining = (99 - n).to_string();
            limiter.observe(
                &loc,
                Observed::from_headers([("X-RateLimit-Remaining", remaining.as_str())]),
            );
            tokio::time::advance(Duration::from_millis(40)).await;
        }
        // The first answer came 10 ms after the start; the window is used up 4.96 s in.
        limiter.acquire(&loc).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(10_010));
    }

    /// Another process takes the GHL work over mid-window: it goes on with the window, not
    /// afresh, and the window's slots come free when they would have in the first process.
    #[tokio::test(start_paused = true)]
    async fn a_window_saved_by_one_process_is_taken_up_by_the_next() {
        let (first, next) = (RateLimiter::default(), RateLimiter::default());
        let loc = location("loc");
        // The wall clock as both processes read it: 4 s into the window at the handover.
        let started_ms = 1_800_000_000_000;
        for _ in 0..100 {
            first.try_acquire(&loc).unwrap();
        }
        tokio::time::advance(Duration::from_secs(4)).await;
        let saved = first.saved(started_ms + 4_000, false);
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].1.sent_ms, vec![started_ms; 100]);
        assert!(
            first.saved(started_ms + 4_000, false).is_empty(),
            "nothing changed since"
        );

        next.resume(saved, started_ms + 4_000, false);
        assert_eq!(
            next.try_acquire(&loc),
            Err(Exhausted::Wait(Duration::from_secs(6)))
        );
        assert_eq!(next.daily_left(&loc).0, 200_000 - 100);
        tokio::time::advance(Duration::from_secs(6)).await;
        next.try_acquire(&loc).unwrap();
        // What it took up counts as saved; what it did since does not.
        assert_eq!(next.saved(started_ms + 10_000, false).len(), 1);
        assert_eq!(next.saved(started_ms + 10_000, true).len(), 1);
    }

    /// The process that did the GHL work died: what it sent after its last save is unknown, so
    /// each location it was sending for waits a whole window; the others do not.
    #[tokio::test(start_paused = true)]
    async fn after_a_death_a_busy_location_waits_a_window_and_a_quiet_one_does_not() {
        let (first, next) = (RateLimiter::default(), RateLimiter::default());
        let (busy, idle, quiet) = (location("busy"), location("idle"), location("quiet"));
        let now_ms = 1_800_000_000_000;
        for _ in 0..3 {
            first.try_acquire(&busy).unwrap();
        }
        first.try_acquire(&idle).unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        first.try_acquire(&busy).unwrap();
        let saved = first.saved(now_ms, false);
        next.resume(saved, now_ms, true);
        assert_eq!(
            next.try_acquire(&busy),
            Err(Exhausted::Wait(Duration::from_secs(10)))
        );
        next.try_acquire(&idle).unwrap();
        next.try_acquire(&quiet).unwrap();
        assert_eq!(next.daily_left(&idle).0, 200_000 - 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_daily_allowance_is_a_hard_stop_until_the_day_has_passed() {
        let limiter = RateLimiter::new(Limits {
            daily_max: 5,
            ..Limits::default()
        });
        let loc = location("loc");
        for _ in 0..5 {
            limiter.acquire(&loc).await.unwrap();
        }
        assert!(matches!(
            limiter.acquire(&loc).await,
            Err(Exhausted::DailyCap(_))
        ));
        tokio::time::advance(DAY).await;
        limiter.acquire(&loc).await.unwrap();
        // GHL's own count wins: it says only 1 is left of 5.
        limiter.observe(
            &loc,
            Observed {
                burst_remaining: None,
                daily_remaining: Some(1),
            },
        );
        limiter.acquire(&loc).await.unwrap();
        assert!(matches!(
            limiter.try_acquire(&loc),
            Err(Exhausted::DailyCap(_))
        ));
    }
}
