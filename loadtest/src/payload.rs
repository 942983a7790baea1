//! The loadtest payload: `{"seq":17,"ts":1732360000123456,"pad":"xxxx"}`.
//!
//! `seq` is the per-channel sequence number the publisher assigned and `ts` the send time in
//! unix microseconds. Both are written first so the receiver finds them with a short scan
//! instead of a full JSON parse (the pad can be kilobytes).

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock unix microseconds. Publisher and subscribers compare clocks, so this must be
/// the wall clock (shared across processes on one machine), not `Instant`.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Bytes of a payload without pad, for the largest seq/ts: used to size the pad.
const FIXED_OVERHEAD: usize = r#"{"seq":,"ts":,"pad":""}"#.len() + 20 + 16;

/// Appends the payload JSON to `out`; the total is about `size` bytes (never less than the
/// fixed fields need).
pub fn write(out: &mut Vec<u8>, seq: u64, ts: u64, size: usize) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, r#"{{"seq":{seq},"ts":{ts},"pad":""#);
    let pad = size.saturating_sub(FIXED_OVERHEAD);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(br#""}"#);
}

/// Reads the unsigned integer after `key` (e.g. `"ts":`), scanning only the first bytes.
fn field(data: &[u8], key: &[u8]) -> Option<u64> {
    // Our fields come first; bound the scan so a foreign huge message costs little.
    let head = &data[..data.len().min(96)];
    let at = head.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = &data[at..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in &digits[..n] {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// `(seq, ts)` of a loadtest payload, or `None` for data some other publisher sent.
pub fn parse(data: &[u8]) -> Option<(u64, u64)> {
    Some((field(data, br#""seq":"#)?, field(data, br#""ts":"#)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let mut out = Vec::new();
        write(&mut out, 17, 1_732_360_000_123_456, 100);
        assert!(out.len() <= 100, "{}", out.len());
        assert!(out.len() >= 80, "{}", out.len());
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        assert_eq!(v["seq"], 17);
        assert_eq!(parse(&out), Some((17, 1_732_360_000_123_456)));
    }

    #[test]
    fn tiny_size_still_valid() {
        let mut out = Vec::new();
        write(&mut out, 1, 2, 0);
        assert_eq!(out, br#"{"seq":1,"ts":2,"pad":""}"#);
        assert_eq!(parse(&out), Some((1, 2)));
    }

    #[test]
    fn foreign_data_is_none() {
        assert_eq!(parse(br#"{"title":"hi"}"#), None);
        assert_eq!(parse(br#"{"seq":"x","ts":1}"#), None);
        assert_eq!(parse(br#"{"seq":99999999999999999999999,"ts":1}"#), None);
        assert_eq!(parse(b""), None);
    }
}
