//! A third party's quota kept exactly, so that Seawall never goes over it: at most `count` calls
//! in *any* `period` (the calls are remembered one by one — a sliding log — which is safe
//! whether the provider counts in fixed windows, sliding windows or a token bucket), at most
//! `burst` of them back to back (paced at `period / count` beyond, GCRA-style), and at most a
//! daily cap per UTC day. A call counts from the moment its answer came ([`CallQuota::settle`]),
//! and as "now" for as long as it is in flight: however long it took to reach the provider, the
//! provider saw it before Seawall stops counting it. Not synchronised: the owner keeps it behind
//! its own lock.

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
    /// When each of the last (up to) `count` settled calls was answered, oldest first.
    times: VecDeque<u64>,
    /// Calls taken and not settled yet (in flight).
    pending: usize,
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
            let times = VecDeque::with_capacity(count.min(1024));
            Rate { count, period_ms, times, pending: 0, pace, tat: 0 }
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
            let total = rate.times.len() + rate.pending;
            if total >= rate.count {
                // This many calls must age out first, oldest answers first; a call in flight
                // ages out only a period after its answer.
                let must_go = total - rate.count + 1;
                at = at.max(match rate.times.get(must_go - 1) {
                    Some(&answered) => answered + rate.period_ms,
                    None => now_ms + rate.period_ms,
                });
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

    /// Records a call leaving at `now_ms` (after [`next_at`](Self::next_at) said it may go):
    /// in flight until [`settle`](Self::settle) or [`give_back`](Self::give_back).
    pub fn take(&mut self, now_ms: u64, day: Day) {
        if let Some(rate) = &mut self.rate {
            rate.pending += 1;
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

    /// A call taken at some time was answered (or may have reached the provider) at `now_ms`:
    /// it counts from now.
    pub fn settle(&mut self, now_ms: u64) {
        if let Some(rate) = &mut self.rate {
            rate.pending = rate.pending.saturating_sub(1);
            let at = rate.times.partition_point(|&t| t <= now_ms);
            rate.times.insert(at, now_ms);
            while rate.times.len() > rate.count {
                rate.times.pop_front();
            }
        }
    }

    /// Forgets a call taken at `at_ms` on day `day` that was never sent (the provider's breaker
    /// was open, no connection could be made).
    pub fn give_back(&mut self, at_ms: u64, day: u64) {
        if let Some(rate) = &mut self.rate {
            rate.pending = rate.pending.saturating_sub(1);
            if let Some((interval, _)) = rate.pace {
                rate.tat = rate.tat.saturating_sub(interval).max(at_ms);
            }
        }
        // A call taken yesterday is not today's to give back.
        if let Some(daily) = self.daily.as_mut().filter(|d| d.day == day) {
            daily.used = daily.used.saturating_sub(1);
        }
    }

    /// Calls left in the current period (and today); `None` when there is no limit.
    pub fn left(&mut self, now_ms: u64, day: Day) -> Option<u64> {
        let by_rate = self.rate.as_mut().map(|rate| {
            rate.forget(now_ms);
            rate.count.saturating_sub(rate.times.len() + rate.pending) as u64
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

    /// Calls made in the current period, those in flight included.
    pub fn used(&mut self, now_ms: u64) -> u64 {
        self.rate.as_mut().map_or(0, |rate| {
            rate.forget(now_ms);
            (rate.times.len() + rate.pending) as u64
        })
    }

    /// Calls made today.
    pub fn used_today(&self, day: Day) -> u64 {
        self.daily.as_ref().map_or(0, |d| if d.day == day.number { d.used } else { 0 })
    }

    /// Carries `old`'s history over to this quota, which replaces it (a reload changed the key's
    /// limits): the calls made count against the new limits, those in flight stay in flight
    /// (they settle on this quota).
    pub fn carry_over(&mut self, old: &CallQuota) {
        if let (Some(new), Some(old)) = (&mut self.rate, &old.rate) {
            let skip = old.times.len().saturating_sub(new.count);
            new.times.extend(old.times.iter().skip(skip));
            new.pending = old.pending;
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

    /// Takes a call at `now` when allowed; it is answered `latency` later.
    fn call(q: &mut CallQuota, now: u64) -> bool {
        let go = q.next_at(now, DAY) <= now;
        if go {
            q.take(now, DAY);
        }
        go
    }

    #[test]
    fn never_more_than_count_in_any_period() {
        let mut q = CallQuota::new(Some(quota(100, 60_000, 100)), None);
        let mut calls = Vec::new();
        let mut now = 1;
        while now < 300_000 {
            if call(&mut q, now) {
                q.settle(now);
                calls.push(now);
            }
            now += 7;
        }
        assert!(!exceeds(&calls, 100, 60_000));
        // ...and the quota is used: 100 a minute over five minutes.
        assert!(calls.len() >= 500, "{}", calls.len());
    }

    #[test]
    fn a_call_counts_from_its_answer() {
        // One a second; the first call takes 300 ms to be answered (a slow connect): the
        // provider may have seen it at 299 ms, so the next waits until 1,300 ms.
        let mut q = CallQuota::new(Some(quota(1, 1_000, 1)), None);
        assert!(call(&mut q, 0));
        assert_eq!(q.next_at(100, DAY), 1_100, "in flight: counted as now");
        q.settle(300);
        assert_eq!(q.next_at(400, DAY), 1_300);
        assert_eq!(q.used(400), 1);
        assert_eq!(q.left(1_300, DAY), Some(1));
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
        assert_eq!(q.next_at(6, DAY), 1_006);
        q.give_back(5, DAY.number);
        assert_eq!(q.next_at(6, DAY), 6);
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
        assert_eq!(q.next_at(3, tomorrow), 3);
        assert_eq!(q.used_today(tomorrow), 0);
        assert_eq!(Day::of(DAY_MS + 5), Day { number: 1, ms_left: DAY_MS - 5 });
    }

    #[test]
    fn history_survives_a_change_of_limits() {
        let mut old = CallQuota::new(Some(quota(5, 1_000, 5)), None);
        for t in 0..5 {
            old.take(t, DAY);
        }
        for t in 0..4 {
            old.settle(t);
        }
        // Four answered at 0..3, one still in flight: it stays in flight, and counts from its
        // answer once it settles on the new quota.
        let mut new = CallQuota::new(Some(quota(3, 1_000, 3)), None);
        new.carry_over(&old);
        assert_eq!(new.left(10, DAY), Some(0));
        assert_eq!(new.next_at(10, DAY), 1_002);
        new.settle(500);
        assert_eq!(new.used(1_100), 1, "answered at 500: counted until 1,500");
        assert_eq!(new.used(1_500), 0);
    }
}
