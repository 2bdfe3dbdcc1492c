//! When a read of a large body should wake: the receive low-water mark (`SO_RCVLOWAT`) the
//! relay sets on the upstream socket while a bulk body comes in. Pure; `io::Conn::wake_at` sets it.
//!
//! Without it, each arriving segment (about 64 KiB on loopback) wakes the waiting read, and the
//! wake-up runs in the sender's context: on the upstream's CPU. With it, the kernel wakes the
//! read once [`WAKE_AT`] bytes are there (or the peer ended, or the receive window is nearly
//! closed). Measured on the benchmark's held set-up, 1 MiB responses at 250 req/s over a TLS
//! upstream: io_uring submissions per response 40–53 → 23–30 and the proxy's CPU per response
//! about a fifth lower (benches/README.md).
//!
//! The mark must never ask for bytes that will not come, or the body's end would wait for
//! ever: it is only set while the bytes still to come on the socket are sure to reach it, for an
//! upstream that sends the length it announced or ends the TCP connection (a FIN or a reset
//! wakes the read whatever the mark). One that stops short and sends only TLS close_notify,
//! keeping TCP open, now waits until TCP ends, where before the alert ended the body.

/// The most a read waits for: two loopback segments. (256 KiB was tried too: a few reads fewer
/// at 250 req/s, no gain at saturation, and longer waits.)
pub const WAKE_AT: usize = 128 * 1024;

/// The mark steps down in these units as the body's end nears, so a body costs a few
/// `setsockopt` calls, not one per read.
const STEP: usize = 64 * 1024;

/// The mark for the next read of a body with `left` bytes not yet handed out, of which the
/// connection may already hold `held` off the socket (`io::Conn::held`, an upper bound): the
/// bytes sure to arrive, rounded down to a [`STEP`] and capped at [`WAKE_AT`]; 1 (the
/// kernel's default: wake at any byte) when that is under one step.
pub fn for_body(left: u64, held: usize) -> usize {
    let sure = left.saturating_sub(held as u64).min(WAKE_AT as u64) as usize;
    (sure / STEP * STEP).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_wakes_at_the_cap() {
        assert_eq!(for_body(100 << 20, 0), WAKE_AT);
        assert_eq!(for_body(100 << 20, 128 * 1024), WAKE_AT);
        assert_eq!(for_body(WAKE_AT as u64, 0), WAKE_AT);
    }

    #[test]
    fn the_mark_steps_down_near_the_end_and_is_1_in_the_last_step() {
        assert_eq!(for_body(WAKE_AT as u64 - 1, 0), STEP);
        assert_eq!(for_body(200 * 1024, 80 * 1024), STEP);
        assert_eq!(for_body(STEP as u64, 0), STEP);
        assert_eq!(for_body(STEP as u64 - 1, 0), 1);
        assert_eq!(for_body(0, 0), 1);
        assert_eq!(for_body(10, 1 << 20), 1, "more held than left");
    }

    #[test]
    fn the_mark_never_asks_for_more_than_is_sure_to_come() {
        for left in (0..2_000_000u64).step_by(4093) {
            for held in [0usize, 1, 4096, 65_535, 131_072, 300_000] {
                let mark = for_body(left, held);
                let sure = left.saturating_sub(held as u64);
                assert!(mark == 1 || mark as u64 <= sure, "left {left} held {held}: mark {mark}");
                assert!((1..=WAKE_AT).contains(&mark));
            }
        }
    }
}
