//! Pause detection. A processor that was paused (SIGSTOP, a VM freeze, a long stall) may have
//! lost its partitions meanwhile without knowing it yet. A ticker beats every 50 ms; any silence
//! longer than half the group's session timeout counts as a pause, and from then on — and for
//! any command queued before it — the processor refuses every command (reads too) for a full
//! session timeout: long enough for the group to tell it which partitions it lost. Writes are
//! protected by the transactional fence anyway; this closes the window for stale reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The detector's state. Cheap to share (`Arc`).
#[derive(Debug)]
pub(crate) struct Detector {
    session_timeout_ms: u64,
    /// The time base of the two instants below (ms since it).
    clock: std::time::Instant,
    /// The last beat of the ticker.
    last_tick_ms: AtomicU64,
    /// The end of a suspension after a pause.
    suspended_until_ms: AtomicU64,
}

impl Detector {
    /// A detector for a group session timeout of `session_timeout_ms`; beating starts with
    /// [`Detector::run`].
    pub(crate) fn new(session_timeout_ms: u32) -> Arc<Self> {
        Arc::new(Self {
            session_timeout_ms: u64::from(session_timeout_ms),
            clock: std::time::Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            suspended_until_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// The longest silence of the ticker that still counts as "running".
    fn threshold_ms(&self) -> u64 {
        (self.session_timeout_ms / 2).max(500)
    }

    /// Whether the processor may serve right now: no pause is going on (the ticker beat
    /// recently) and no suspension after one.
    pub(crate) fn may_serve(&self) -> bool {
        let now = self.now_ms();
        now.saturating_sub(self.last_tick_ms.load(Ordering::Acquire)) < self.threshold_ms()
            && now >= self.suspended_until_ms.load(Ordering::Acquire)
    }

    /// Beat every 50 ms until `shutdown`; notice pauses and suspend serving after one.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.beat();
        }
    }

    fn beat(&self) {
        let now = self.now_ms();
        let gap = now.saturating_sub(self.last_tick_ms.swap(now, Ordering::AcqRel));
        if gap >= self.threshold_ms() {
            self.suspended_until_ms
                .store(now + self.session_timeout_ms, Ordering::Release);
            warn!(
                paused_ms = gap,
                suspended_ms = self.session_timeout_ms,
                "the process was paused; not serving until the group confirms its partitions"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silence_longer_than_half_the_session_suspends_serving() {
        let detector = Detector::new(1_000);
        detector.beat();
        assert!(detector.may_serve());
        // A silence of 600 ms (> 500 ms, half the session timeout): the next beat suspends.
        detector.last_tick_ms.store(0, Ordering::Release);
        std::thread::sleep(Duration::from_millis(600));
        assert!(!detector.may_serve(), "the silence itself already refuses");
        detector.beat();
        assert!(!detector.may_serve(), "suspended for a session timeout");
        let until = detector.suspended_until_ms.load(Ordering::Acquire);
        assert!(until >= detector.now_ms() + 900, "{until}");
    }
}
