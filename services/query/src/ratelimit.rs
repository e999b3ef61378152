//! Per-client token buckets: each client may burst up to `burst` requests,
//! then gets `per_second` more each second. The table of clients is bounded:
//! when it is full, clients whose bucket has refilled (idle ones, which lose
//! nothing by being forgotten) are dropped first, then the longest unseen.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    limit: RateLimit,
    max_clients: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, max_clients: usize) -> Self {
        Self {
            limit: RateLimit {
                per_second: limit.per_second.max(f64::MIN_POSITIVE),
                burst: limit.burst.max(1),
            },
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client` at `now`; when there is none, says how
    /// long until there will be.
    pub fn check(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst);
        // A poisoned lock only means another request panicked mid-update;
        // the counts are still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(client) && buckets.len() >= self.max_clients {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(client.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.limit.per_second).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.limit.per_second;
            Err(Duration::from_secs_f64(wait.min(86_400.0)))
        }
    }

    pub fn clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let burst = f64::from(self.limit.burst);
        let per_second = self.limit.per_second;
        buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * per_second < burst
        });
        if buckets.len() >= self.max_clients
            && let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(client, _)| client.clone())
        {
            buckets.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(RateLimit { per_second, burst }, max_clients)
    }

    #[test]
    fn a_burst_is_allowed_then_refused_until_refilled() {
        let limiter = limiter(2.0, 3, 10);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("a", start), Ok(()));
        }
        let wait = limiter.check("a", start).expect_err("over the burst");
        assert!(
            (wait.as_secs_f64() - 0.5).abs() < 1e-6,
            "one token takes 1/2 s: {wait:?}"
        );
        // Other clients have their own buckets.
        assert_eq!(limiter.check("b", start), Ok(()));
        assert_eq!(
            limiter.check("a", start + Duration::from_millis(500)),
            Ok(())
        );
        assert!(
            limiter
                .check("a", start + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn the_client_table_stays_bounded_and_keeps_active_limited_clients() {
        let limiter = limiter(0.001, 2, 100);
        let start = Instant::now();
        limiter.check("busy", start).expect("first");
        limiter.check("busy", start).expect("second");
        // A flood of one-off clients while the limited one keeps trying:
        // the least recently seen are evicted, never the active client (a
        // fresh bucket would hand it a new burst).
        for i in 0..10_000u64 {
            let now = start + Duration::from_millis(i);
            let _ = limiter.check(&format!("client-{i}"), now);
            assert!(limiter.clients() <= 100);
            if i % 10 == 0 {
                limiter.check("busy", now).expect_err("still limited");
            }
        }
        // Idle clients whose bucket refilled are dropped before anyone else.
        let later = start + Duration::from_secs(100_000);
        limiter.check("newcomer", later).expect("fresh client");
        assert_eq!(limiter.clients(), 1, "every refilled bucket was dropped");
    }
}
