//! `statehouse-loadtest`: measures Statehouse and the architectures it is compared with.
//!
//! * [`scenario`]: what a client sends (`es-counter`, `shopping-cart`; new ones plug into
//!   [`scenario::Scenario`]).
//! * [`keys`]: which entity each command goes to (uniform or Zipf over N entities).
//! * [`driver`]: open-loop (constant or Poisson arrivals, latency from the *intended* send time,
//!   so no coordinated omission) and closed-loop (C clients) runs with warm-up, HdrHistogram
//!   percentiles, throughput and errors by gRPC code.
//! * [`sweep`]: a closed-loop maximum, then an open-loop sweep of rates, then the correctness
//!   check (no acknowledged increment lost).
//! * [`baseline`]: the stateless gRPC service doing read → modify → write on Cassandra per
//!   request (plain writes or lightweight transactions), or in memory for tests.
//! * [`floor`]: raw Kafka transactional produce batched like the partition writer.
//! * [`lifecycle`]: activating many entities, and the takeover time after a processor kill.
//! * [`usage`]: CPU of every process and the processor's records per transaction, per step.
//! * [`report`]: JSON, Markdown and the latency-vs-throughput SVG; [`report::Rounds`] combines
//!   several rounds of one bench into medians and spreads.

pub mod baseline;
pub mod driver;
pub mod floor;
pub mod keys;
pub mod kinds;
pub mod lifecycle;
pub mod overload;
pub mod report;
pub mod scenario;
pub mod sweep;
pub mod usage;

/// A small, fast, seedable pseudo-random generator (SplitMix64): load generation needs
/// reproducible streams, not cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// CPU seconds (user + system) and peak RSS (KiB) of this process, from `/proc/self`.
pub fn self_usage() -> (f64, u64) {
    let cpu = usage::cpu_seconds("self").unwrap_or(0.0);
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (cpu, hwm)
}
