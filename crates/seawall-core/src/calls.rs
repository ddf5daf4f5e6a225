//! A third party's quota kept exactly, so that Seawall never goes over it: at most `count` calls
//! in *any* `period` (the calls are remembered one by one — a sliding log — which is safe
//! whether the provider counts in fixed windows, sliding windows or a token bucket), at most
//! `burst` of them back to back (paced at `period / count` beyond, GCRA-style), and at most a
//! daily cap per UTC day. Not synchronised: the owner keeps it behind its own lock.

use std::collections::VecDeque;

use crate::gcra::Quota;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// The calendar day as the daily cap counts it: its number (days since the Unix epoch, UTC)
/// and the milliseconds left before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub number: u64,
    pub ms_left: u64,
}

impl Day {
    /// The day of `unix_ms` (milliseconds since the Unix epoch).
    pub fn of(unix_ms: u64) -> Day {
        Day { number: unix_ms / DAY_MS, ms_left: DAY_MS - unix_ms % DAY_MS }
    }
}

/// One key's (or one provider's) calls.
#[derive(Debug, Clone)]
pub struct CallQuota {
    rate: Option<Rate>,
    daily: Option<Daily>,
}

#[derive(Debug, Clone)]
struct Rate {
    count: usize,
    period_ms: u64,
    /// When each of the last (up to) `count` calls went, oldest first.
    times: VecDeque<u64>,
    /// Pacing beyond the burst: the time between calls and how far ahead the theoretical
    /// arrival time may run; `None` when the burst is the whole count (no pacing).
    pace: Option<(u64, u64)>,
    tat: u64,
}

#[derive(Debug, Clone)]
struct Daily {
    cap: u64,
    day: u64,
    used: u64,
}

impl CallQuota {
    /// A quota of `rate` (count per period, burst) and `daily` calls per UTC day; either may be
    /// absent (no limit of that kind).
    pub fn new(rate: Option<Quota>, daily: Option<u64>) -> CallQuota {
        let rate = rate.map(|q| {
            let count = q.count.max(1) as usize;
            let period_ms = (q.period_ns / 1_000_000).max(1);
            let burst = (q.burst.max(1) as usize).min(count);
            let interval = (period_ms / count as u64).max(1);
            let pace = (burst < count).then(|| (interval, interval * (burst as u64 - 1)));
            Rate { count, period_ms, times: VecDeque::with_capacity(count.min(1024)), pace, tat: 0 }
        });
        let daily = daily.map(|cap| Daily { cap, day: 0, used: 0 });
        CallQuota { rate, daily }
    }

    /// When the next call may go: `now_ms` or earlier when it may go now. `now_ms` is a
    /// monotonic clock; `day` is today by the wall clock.
    pub fn next_at(&mut self, now_ms: u64, day: Day) -> u64 {
        let mut at = now_ms;
        if let Some(rate) = &mut self.rate {
            rate.forget(now_ms);
            if rate.times.len() >= rate.count {
                at = at.max(rate.times[0] + rate.period_ms);
            }
            if let Some((_, tolerance)) = rate.pace {
                at = at.max(rate.tat.saturating_sub(tolerance));
            }
        }
        if let Some(daily) = &mut self.daily {
            if daily.day != day.number {
                (daily.day, daily.used) = (day.number, 0);
            }
            if daily.used >= daily.cap {
                at = at.max(now_ms + day.ms_left);
            }
        }
        at
    }

    /// Records a call made at `now_ms` (after [`next_at`](Self::next_at) said it may go).
    pub fn take(&mut self, now_ms: u64, day: Day) {
        if let Some(rate) = &mut self.rate {
            rate.times.push_back(now_ms);
            if rate.times.len() > rate.count {
                rate.times.pop_front();
            }
            if let Some((interval, _)) = rate.pace {
                rate.tat = rate.tat.max(now_ms) + interval;
            }
        }
        if let Some(daily) = &mut self.daily {
            if daily.day != day.number {
                (daily.day, daily.used) = (day.number, 0);
            }
            daily.used += 1;
        }
    }

    /// Forgets the call recorded at `at_ms`: it was never sent (the provider's breaker was
    /// open, no connection could be made).
    pub fn give_back(&mut self, at_ms: u64) {
        if let Some(rate) = &mut self.rate {
            if let Some(i) = rate.times.iter().rposition(|&t| t == at_ms) {
                rate.times.remove(i);
            }
            if let Some((interval, _)) = rate.pace {
                rate.tat = rate.tat.saturating_sub(interval).max(at_ms);
            }
        }
        if let Some(daily) = &mut self.daily {
            daily.used = daily.used.saturating_sub(1);
        }
    }

    /// Calls left in the current period (and today); `None` when there is no limit.
    pub fn left(&mut self, now_ms: u64, day: Day) -> Option<u64> {
        let by_rate = self.rate.as_mut().map(|rate| {
            rate.forget(now_ms);
            (rate.count - rate.times.len()) as u64
        });
        let by_day = self.daily.as_ref().map(|d| {
            if d.day == day.number {
                d.cap.saturating_sub(d.used)
            } else {
                d.cap
            }
        });
        match (by_rate, by_day) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Calls made in the current period.
    pub fn used(&mut self, now_ms: u64) -> u64 {
        self.rate.as_mut().map_or(0, |rate| {
            rate.forget(now_ms);
            rate.times.len() as u64
        })
    }

    /// Calls made today.
    pub fn used_today(&self, day: Day) -> u64 {
        self.daily.as_ref().map_or(0, |d| if d.day == day.number { d.used } else { 0 })
    }

    /// Carries `old`'s history over to this quota (a reload that kept the key): the calls made
    /// count against the new limits.
    pub fn carry_over(&mut self, old: &CallQuota) {
        if let (Some(new), Some(old)) = (&mut self.rate, &old.rate) {
            let skip = old.times.len().saturating_sub(new.count);
            new.times.extend(old.times.iter().skip(skip));
            new.tat = old.tat;
        }
        if let (Some(new), Some(old)) = (&mut self.daily, &old.daily) {
            (new.day, new.used) = (old.day, old.used);
        }
    }
}

impl Rate {
    /// Drops the calls older than the period.
    fn forget(&mut self, now_ms: u64) {
        while self.times.front().is_some_and(|&t| t + self.period_ms <= now_ms) {
            self.times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Day = Day { number: 10, ms_left: 5_000 };

    fn quota(count: u32, period_ms: u64, burst: u32) -> Quota {
        Quota { count, period_ns: period_ms * 1_000_000, burst }
    }

    /// Whether any `period` window of `calls` holds more than `count`.
    fn exceeds(calls: &[u64], count: usize, period: u64) -> bool {
        calls
            .iter()
            .enumerate()
            .any(|(i, &t)| calls[i..].iter().take_while(|&&u| u < t + period).count() > count)
    }

    #[test]
    fn never_more_than_count_in_any_period() {
        let mut q = CallQuota::new(Some(quota(100, 60_000, 100)), None);
        let mut calls = Vec::new();
        let mut now = 1;
        while now < 300_000 {
            let at = q.next_at(now, DAY);
            if at <= now {
                q.take(now, DAY);
                calls.push(now);
            }
            now += 7;
        }
        assert!(!exceeds(&calls, 100, 60_000));
        // ...and the quota is used: 100 a minute over five minutes.
        assert!(calls.len() >= 500, "{}", calls.len());
    }

    #[test]
    fn a_burst_is_paced_beyond_its_size() {
        let mut q = CallQuota::new(Some(quota(10, 1_000, 2)), None);
        assert_eq!(q.next_at(0, DAY), 0);
        q.take(0, DAY);
        q.take(0, DAY);
        // Two at once, then one per 100 ms.
        assert_eq!(q.next_at(0, DAY), 100);
        q.take(100, DAY);
        assert_eq!(q.next_at(100, DAY), 200);
    }

    #[test]
    fn a_call_given_back_frees_its_place() {
        let mut q = CallQuota::new(Some(quota(1, 1_000, 1)), None);
        q.take(5, DAY);
        assert_eq!(q.next_at(6, DAY), 1_005);
        q.give_back(5);
        assert!(q.next_at(6, DAY) <= 6);
        assert_eq!(q.left(6, DAY), Some(1));
    }

    #[test]
    fn the_daily_cap_waits_for_the_next_day() {
        let mut q = CallQuota::new(None, Some(2));
        q.take(0, DAY);
        q.take(1, DAY);
        assert_eq!(q.next_at(2, DAY), 2 + DAY.ms_left);
        assert_eq!(q.left(2, DAY), Some(0));
        let tomorrow = Day { number: 11, ms_left: DAY_MS };
        assert!(q.next_at(3, tomorrow) <= 3);
        assert_eq!(q.used_today(tomorrow), 0);
        assert_eq!(Day::of(DAY_MS + 5), Day { number: 1, ms_left: DAY_MS - 5 });
    }

    #[test]
    fn history_survives_a_reload() {
        let mut old = CallQuota::new(Some(quota(5, 1_000, 5)), None);
        for t in 0..5 {
            old.take(t, DAY);
        }
        let mut new = CallQuota::new(Some(quota(3, 1_000, 3)), None);
        new.carry_over(&old);
        assert_eq!(new.left(10, DAY), Some(0));
        assert_eq!(new.next_at(10, DAY), 1_002);
    }
}
