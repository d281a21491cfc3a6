//! Adaptive admission: how many calls a gateway or processor runs at once, learned from the
//! latency it measures (`docs/security.md`, "Load shedding").
//!
//! A fixed rate limit is wrong twice: too low, it refuses work the system could do; too high,
//! it admits work that then waits in queues — every queue is bounded, but a bound only says
//! how much memory waiting takes, not how long — and every admitted call gets slow. What the
//! system can take moves with the user function, the entity mix, Kafka and the machine. So the
//! limit is a *concurrency* limit that follows the latency, as TCP congestion control follows
//! the round-trip time:
//!
//! * every finished call adds its latency to a short-term average (`short`, one window of
//!   samples); the long-term latency (`long`, what the system takes when it is not queueing)
//!   follows a lower `short` quickly (a fifth of the way per window) and a higher one slowly
//!   (a one-minute average, ten
//!   minutes while the limit is fully used: then a higher latency is most likely the queueing
//!   the limit itself lets in);
//! * after each window of samples, with `gradient = clamp(tolerance × long / short, 0.5, 1)`:
//!   while the latency stays within `tolerance` of its long-term level (gradient 1) the limit
//!   grows by √limit; once calls queue and `short` rises, it moves a fifth of the way to
//!   `limit × gradient + √limit` — it shrinks, never by more than a tenth per window — until
//!   they stop queueing;
//! * the limit only grows while it is used (at least half of it in flight), so an idle system
//!   does not drift to the maximum and then admit a burst it cannot take;
//! * when the system got slower for good (a heavier user function, a busier Kafka), `long`
//!   catches up within minutes and the limit grows back, so it does not stay collapsed.
//!
//! A call above the limit is refused at once — RESOURCE_EXHAUSTED, HTTP 429 with `retry-after`
//! — before it takes memory or a place in a queue: the accepted calls keep their latency, and
//! the refused ones can go elsewhere or come back. Calls that fail with "overloaded" further
//! down are no latency sample (they did not run); other failures are (a failure is work too).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics as m;

/// `[*.admission]`: adaptive admission of one role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Options {
    /// Refuse calls above the learned limit; false admits everything (bounded queues still
    /// refuse what does not fit).
    pub enabled: bool,
    /// The limit before anything was measured.
    pub initial_limit: usize,
    /// The limit never goes below this (some calls always run, so latency is measured).
    pub min_limit: usize,
    /// The limit never goes above this.
    pub max_limit: usize,
    /// How much slower than its long-term level the latency may get before the limit shrinks
    /// (3.0 = three times as slow: a partition writer batching more commands per
    /// transaction is somewhat slower per command and much faster in total, and a window's
    /// latency is noisy on a machine Kafka shares; a system past its capacity gets slower
    /// without bound, so even a wide tolerance catches it).
    pub tolerance: f64,
    /// Samples per limit update.
    pub window: usize,
    /// `retry-after` of a refused call, ms.
    pub retry_after_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_limit: 64,
            min_limit: 8,
            max_limit: 4_096,
            tolerance: 3.0,
            window: 64,
            retry_after_ms: 1_000,
        }
    }
}

impl Options {
    /// Check the options; `section` names them in the error (e.g. `gateway.admission`).
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.min_limit == 0 || self.min_limit > self.max_limit {
            return Err(format!(
                "{section}.min-limit {} must be at least 1 and at most max-limit {}",
                self.min_limit, self.max_limit
            ));
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return Err(format!(
                "{section}.initial-limit {} must be between min-limit {} and max-limit {}",
                self.initial_limit, self.min_limit, self.max_limit
            ));
        }
        if !(1.0..=10.0).contains(&self.tolerance) {
            return Err(format!(
                "{section}.tolerance {} must be between 1.0 and 10.0",
                self.tolerance
            ));
        }
        if self.window == 0 || self.retry_after_ms == 0 {
            return Err(format!(
                "{section}.window and retry-after-ms must be positive"
            ));
        }
        Ok(())
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The limit at the time.
    pub limit: usize,
    /// When the caller may try again.
    pub retry_after: Duration,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "overloaded: {} calls are running, the limit it measured it can take; retry after {} ms",
            self.limit,
            self.retry_after.as_millis()
        )
    }
}

/// How an admitted call ended, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran (successfully or not): its latency is a sample.
    Ran,
    /// It did not run (refused further down, cancelled): no sample.
    Dropped,
}

/// The adaptive limit of one role; cheap to clone.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: Options,
    /// The `role` label of its metrics.
    role: &'static str,
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    estimator: Mutex<Estimator>,
}

impl Limiter {
    /// A limiter of `role` (the `role` label of its metrics: gateway, processor).
    pub fn new(options: Options, role: &'static str) -> Self {
        let estimator = Estimator::new(&options);
        metrics::gauge!(m::ADMISSION_LIMIT, "role" => role).set(options.initial_limit as f64);
        metrics::counter!(m::ADMISSION_REFUSED, "role" => role).increment(0);
        Self {
            inner: Arc::new(Inner {
                role,
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(options.initial_limit),
                estimator: Mutex::new(estimator),
                options,
            }),
        }
    }

    /// Admit one call, or refuse it at once.
    pub fn try_acquire(&self) -> Result<Permit, Refused> {
        let inner = &self.inner;
        let in_flight = inner.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let limit = inner.limit.load(Ordering::Acquire);
        if inner.options.enabled && in_flight > limit {
            inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(m::ADMISSION_REFUSED, "role" => inner.role).increment(1);
            return Err(Refused {
                limit,
                retry_after: Duration::from_millis(inner.options.retry_after_ms),
            });
        }
        Ok(Permit {
            inner: Arc::clone(inner),
            started: Instant::now(),
            in_flight,
            outcome: Outcome::Dropped,
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Acquire)
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }
}

/// An admitted call; its drop ends it (a latency sample if [`Permit::end`] said it ran).
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    started: Instant,
    /// Calls in flight when it was admitted (this one included).
    in_flight: usize,
    outcome: Outcome,
}

impl Permit {
    /// Start the call's clock now (e.g. once its request was read: a slow client is no sign
    /// of a slow system).
    pub fn start(&mut self) {
        self.started = Instant::now();
    }

    /// Set how the call ended.
    pub fn end(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let inner = &self.inner;
        inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.outcome != Outcome::Ran {
            return;
        }
        let now = Instant::now();
        let latency = now.saturating_duration_since(self.started);
        let mut estimator = inner.estimator.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(new) = estimator.sample(latency, self.in_flight, now, &inner.options) {
            inner.limit.store(new, Ordering::Release);
            metrics::gauge!(m::ADMISSION_LIMIT, "role" => inner.role).set(new as f64);
        }
    }
}

/// The latency averages and the limit arithmetic (no clock of its own: samples come with
/// their time, so tests can run hours in microseconds).
#[derive(Debug)]
struct Estimator {
    /// Sum and count of the current window's latencies, and its highest in-flight count.
    sum: Duration,
    count: usize,
    peak_in_flight: usize,
    /// Long-term latency, seconds (0 = none yet), and when it last moved.
    long: f64,
    long_at: Option<Instant>,
    /// The limit as a real number (it moves by fractions).
    limit: f64,
}

/// How long the long-term latency takes to follow a lasting change upwards (an exponential
/// average with this time constant). Long enough that a minute of overload does not teach it
/// that queueing is normal; short enough that a system that got slower for good (a heavier
/// user function) gets its limit back within minutes. Downwards it follows at once.
const LONG_TERM: Duration = Duration::from_secs(60);
/// Weight of a faster window in the long-term latency.
const LONG_DOWN_WEIGHT: f64 = 0.2;
/// [`LONG_TERM`] while the limit is fully used.
const LONG_TERM_SATURATED: Duration = Duration::from_secs(600);

impl Estimator {
    fn new(options: &Options) -> Self {
        Self {
            sum: Duration::ZERO,
            count: 0,
            peak_in_flight: 0,
            long: 0.0,
            long_at: None,
            limit: options.initial_limit as f64,
        }
    }

    /// Add one sample taken at `now` with `in_flight` calls running; the new limit when a
    /// window completed.
    fn sample(
        &mut self,
        latency: Duration,
        in_flight: usize,
        now: Instant,
        options: &Options,
    ) -> Option<usize> {
        self.sum += latency;
        self.count += 1;
        self.peak_in_flight = self.peak_in_flight.max(in_flight);
        if self.count < options.window {
            return None;
        }
        let short = self.sum.as_secs_f64() / self.count as f64;
        let peak = self.peak_in_flight;
        (self.sum, self.count, self.peak_in_flight) = (Duration::ZERO, 0, 0);
        if short <= 0.0 {
            return None;
        }
        let since = self
            .long_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.long_at = Some(now);
        if self.long == 0.0 {
            self.long = short;
        } else if short < self.long {
            // Down quickly, but not to one lucky window.
            self.long += LONG_DOWN_WEIGHT * (short - self.long);
        } else {
            // While the limit is what holds calls back, a higher latency is most likely the
            // queueing the limit lets in: the level follows it ten times slower.
            let saturated = peak as f64 >= 0.9 * self.limit;
            let term = if saturated {
                LONG_TERM_SATURATED
            } else {
                LONG_TERM
            };
            let weight = (since.as_secs_f64() / term.as_secs_f64()).min(1.0);
            self.long += weight * (short - self.long);
        }
        let gradient = (options.tolerance * self.long / short).clamp(0.5, 1.0);
        if gradient >= 1.0 {
            // Healthy: grow by √limit at once (a limit that fell during a burst is back within a
            // few windows), but only a limit that is used.
            if peak as f64 >= self.limit / 2.0 {
                self.limit += self.limit.sqrt();
            }
        } else {
            // Queueing: shrink, smoothed, so one slow window does not halve the limit.
            let new = self.limit * gradient + self.limit.sqrt();
            self.limit = 0.8 * self.limit + 0.2 * new;
        }
        self.limit = self
            .limit
            .clamp(options.min_limit as f64, options.max_limit as f64);
        Some(self.limit.round() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            initial_limit: 16,
            min_limit: 2,
            max_limit: 1_000,
            window: 10,
            ..Options::default()
        }
    }

    /// Run `windows` windows of samples, 10 ms of time apart, whose latency is
    /// `latency(limit)` ms with the estimator's limit fully used; the limit after them.
    fn run(
        e: &mut Estimator,
        o: &Options,
        clock: &mut Instant,
        windows: usize,
        latency: impl Fn(f64) -> f64,
    ) -> f64 {
        for _ in 0..windows {
            let limit = e.limit;
            for _ in 0..o.window {
                *clock += Duration::from_millis(1);
                e.sample(
                    Duration::from_secs_f64(latency(limit) / 1000.0),
                    limit as usize,
                    *clock,
                    o,
                );
            }
        }
        e.limit
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_settles_where_queueing_starts() {
        let o = options();
        let mut e = Estimator::new(&o);
        let clock = &mut Instant::now();
        // A system that runs 100 calls at once at 10 ms; beyond that calls queue and the
        // latency grows with the excess (Little's law). 600 windows: 60 s.
        let system = |limit: f64| 10.0 * (limit / 100.0).max(1.0);
        let limit = run(&mut e, &o, clock, 6_000, system);
        assert!(
            (90.0..=450.0).contains(&limit),
            "the limit settles near where latency triples (300), got {limit}"
        );
    }

    #[test]
    fn the_limit_shrinks_when_latency_rises_and_recovers_after() {
        let o = options();
        let mut e = Estimator::new(&o);
        let clock = &mut Instant::now();
        let limit = run(&mut e, &o, clock, 200, |_| 5.0);
        assert!(limit > 100.0, "a fast system gets a high limit: {limit}");
        // Something downstream got 10× slower at the same concurrency (e.g. Kafka is busy):
        // the limit falls.
        let slow = run(&mut e, &o, clock, 20, |_| 50.0);
        assert!(slow < limit / 2.0, "{slow} vs {limit}");
        // It stays slow for ten minutes: the long-term level follows and the limit grows again.
        let adapted = run(&mut e, &o, clock, 60_000, |_| 50.0);
        assert!(adapted > 2.0 * slow, "{adapted} vs {slow}");
    }

    #[test]
    fn an_idle_limit_does_not_grow_and_bounds_hold() {
        let o = options();
        let mut e = Estimator::new(&o);
        let clock = &mut Instant::now();
        for _ in 0..1_000 {
            // One call at a time, fast.
            *clock += Duration::from_millis(1);
            e.sample(Duration::from_millis(1), 1, *clock, &o);
        }
        assert!(e.limit <= 16.0, "an unused limit stays: {}", e.limit);
        let limit = run(&mut e, &o, clock, 2_000, |_| 1.0);
        assert!(limit <= o.max_limit as f64);
        let limit = run(&mut e, &o, clock, 200, |l| l * 100.0);
        assert!(limit >= o.min_limit as f64);
    }

    #[test]
    fn calls_above_the_limit_are_refused_at_once_and_permits_release() {
        let limiter = Limiter::new(
            Options {
                initial_limit: 2,
                min_limit: 1,
                ..Options::default()
            },
            "test",
        );
        let a = limiter.try_acquire().unwrap();
        let b = limiter.try_acquire().unwrap();
        let refused = limiter.try_acquire().unwrap_err();
        assert_eq!(refused.limit, 2);
        assert!(refused.to_string().contains("retry after 1000 ms"));
        assert_eq!(limiter.in_flight(), 2);
        drop(a);
        let c = limiter.try_acquire().unwrap();
        drop((b, c));
        assert_eq!(limiter.in_flight(), 0);

        let off = Limiter::new(
            Options {
                enabled: false,
                initial_limit: 1,
                min_limit: 1,
                ..Options::default()
            },
            "test",
        );
        let permits: Vec<_> = (0..10).map(|_| off.try_acquire().unwrap()).collect();
        assert_eq!(off.in_flight(), 10);
        drop(permits);
    }

    #[test]
    fn validation_names_the_key() {
        let o = Options {
            min_limit: 0,
            ..Options::default()
        };
        assert!(
            o.validate("gateway.admission")
                .unwrap_err()
                .contains("gateway.admission.min-limit")
        );
        let o = Options {
            initial_limit: 100_000,
            ..Options::default()
        };
        assert!(o.validate("x").unwrap_err().contains("initial-limit"));
        let o = Options {
            tolerance: 0.5,
            ..Options::default()
        };
        assert!(o.validate("x").unwrap_err().contains("tolerance"));
        Options::default().validate("x").unwrap();
    }
}
