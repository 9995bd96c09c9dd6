//! The 128-byte payload of every `pubsub` and `durable` message: the send
//! time in nanoseconds since a base instant shared by the whole process
//! (20 digits), the message's sequence number (20 digits), then padding.
//! All ASCII, so the same bytes travel as a JSON string through the hub and
//! as raw bytes through NATS and Redis. Publisher and subscribers live in
//! this one process, so the monotonic clock is shared and publish-to-receive
//! latency is a subtraction.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Payload bytes per message.
pub(crate) const SIZE: usize = 128;
const DIGITS: usize = 20;

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds from the process's base instant to `t`.
pub(crate) fn ns_at(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds from the process's base instant to now.
pub(crate) fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// The payload of message `seq`, sent at `sent_ns`.
pub(crate) fn make(sent_ns: u64, seq: u64) -> String {
    let mut p = format!("{sent_ns:0DIGITS$}{seq:0DIGITS$}");
    while p.len() < SIZE {
        p.push('x');
    }
    p
}

/// The send time written in a payload, if it is one of ours.
pub(crate) fn sent_ns(payload: &[u8]) -> Option<u64> {
    let digits = payload.get(..DIGITS)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Records `d` in a histogram of microseconds (clamped to its range).
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

/// Records the time from `sent_ns` to now.
pub(crate) fn record_since(h: &mut Histogram<u64>, sent_ns: u64) {
    record(h, Duration::from_nanos(now_ns().saturating_sub(sent_ns)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = make(123_456_789, 42);
        assert_eq!(p.len(), SIZE);
        assert_eq!(sent_ns(p.as_bytes()), Some(123_456_789));
        assert_eq!(sent_ns(b"hello"), None);
        assert_eq!(sent_ns(b"0000000000000000000x0000"), None);
    }
}
