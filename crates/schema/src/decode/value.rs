//! Text → value conversions for temporal and decimal columns. Hand-written fast paths for the
//! common ISO-8601 shapes; every failure returns a short reason used in the dead-letter message.

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

struct Digits<'a> {
    b: &'a [u8],
    i: usize,
}

impl Digits<'_> {
    fn fixed(&mut self, n: usize) -> Option<u32> {
        let s = self.b.get(self.i..self.i + n)?;
        let mut v = 0u32;
        for &c in s {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as u32;
        }
        self.i += n;
        Some(v)
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

fn date_part(d: &mut Digits) -> Result<i64, &'static str> {
    let y = d.fixed(4).ok_or("invalid date")? as i64;
    if !d.eat(b'-') {
        return Err("invalid date");
    }
    let m = d.fixed(2).ok_or("invalid date")?;
    if !d.eat(b'-') {
        return Err("invalid date");
    }
    let day = d.fixed(2).ok_or("invalid date")?;
    if !(1..=12).contains(&m) || day == 0 || day > days_in_month(y, m) {
        return Err("no such date");
    }
    Ok(days_from_civil(y, m, day))
}

/// Parses `HH:MM[:SS[.fraction]]`; returns nanoseconds of day.
fn time_part(d: &mut Digits) -> Result<i64, &'static str> {
    let h = d.fixed(2).ok_or("invalid time")?;
    if !d.eat(b':') {
        return Err("invalid time");
    }
    let mi = d.fixed(2).ok_or("invalid time")?;
    let mut s = 0;
    let mut nanos = 0i64;
    if d.eat(b':') {
        s = d.fixed(2).ok_or("invalid time")?;
        if d.eat(b'.') || d.eat(b',') {
            let mut scale = 100_000_000i64;
            let start = d.i;
            while let Some(c) = d.peek().filter(u8::is_ascii_digit) {
                nanos += (c - b'0') as i64 * scale;
                scale /= 10;
                d.i += 1;
            }
            if d.i == start {
                return Err("invalid fraction of second");
            }
        }
    }
    if h > 23 || mi > 59 || s > 59 {
        return Err("time out of range");
    }
    Ok(((h as i64 * 60 + mi as i64) * 60 + s as i64) * 1_000_000_000 + nanos)
}

/// `YYYY-MM-DD` → days since epoch.
pub(crate) fn parse_date(s: &str) -> Result<i32, &'static str> {
    let mut d = Digits {
        b: s.as_bytes(),
        i: 0,
    };
    let days = date_part(&mut d)?;
    if !d.done() {
        return Err("trailing characters after date");
    }
    i32::try_from(days).map_err(|_| "date out of range")
}

/// `HH:MM[:SS[.ffffff]]` → microseconds of day.
pub(crate) fn parse_time(s: &str) -> Result<i64, &'static str> {
    let mut d = Digits {
        b: s.as_bytes(),
        i: 0,
    };
    let n = time_part(&mut d)?;
    if !d.done() {
        return Err("trailing characters after time");
    }
    Ok(n / 1000)
}

/// ISO-8601 / RFC 3339 timestamp → micro- or nanoseconds since epoch (UTC).
/// `require_offset`: timestamptz values must say their offset (`Z`, `+02:00`, `+0200`, `+02`).
/// A timestamp without zone given an offset is normalised to UTC.
pub(crate) fn parse_timestamp(
    s: &str,
    require_offset: bool,
    nanos: bool,
) -> Result<i64, &'static str> {
    let mut d = Digits {
        b: s.as_bytes(),
        i: 0,
    };
    let days = date_part(&mut d).map_err(|e| match e {
        "invalid date" => "not an ISO-8601 timestamp",
        e => e,
    })?;
    let mut tod = 0i64;
    if d.eat(b'T') || d.eat(b't') || d.eat(b' ') {
        tod = time_part(&mut d)?;
    } else if !d.done() {
        return Err("expected 'T' between date and time");
    }
    let offset_secs: i64 = match d.peek() {
        None => {
            if require_offset {
                return Err("missing UTC offset (add Z or +HH:MM)");
            }
            0
        }
        Some(b'Z' | b'z') => {
            d.i += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            d.i += 1;
            let h = d.fixed(2).ok_or("invalid UTC offset")? as i64;
            let m = if d.eat(b':') {
                d.fixed(2).ok_or("invalid UTC offset")? as i64
            } else {
                d.fixed(2).unwrap_or(0) as i64
            };
            if h > 23 || m > 59 {
                return Err("invalid UTC offset");
            }
            let v = h * 3600 + m * 60;
            if sign == b'-' { -v } else { v }
        }
        Some(_) => return Err("invalid characters after time"),
    };
    if !d.done() {
        return Err("trailing characters after timestamp");
    }
    let secs = days * 86_400 + (tod / 1_000_000_000) - offset_secs;
    let sub = tod % 1_000_000_000;
    if nanos {
        secs.checked_mul(1_000_000_000)
            .and_then(|v| v.checked_add(sub))
            .ok_or("timestamp out of range")
    } else {
        secs.checked_mul(1_000_000)
            .and_then(|v| v.checked_add(sub / 1000))
            .ok_or("timestamp out of range")
    }
}

/// Epoch milliseconds (possibly fractional) → micro- or nanoseconds.
pub(crate) fn millis_to_unit(ms: f64, nanos: bool) -> Option<i64> {
    let v = ms * if nanos { 1e6 } else { 1e3 };
    (v.is_finite() && v.abs() < 9.2e18).then(|| v.round() as i64)
}

/// Parses a decimal literal (JSON number text or string) into its unscaled value at `scale`.
/// Refuses values that would lose digits or exceed `precision`.
pub(crate) fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, &'static str> {
    let b = text.trim().as_bytes();
    let (neg, b) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    // Mantissa digits accumulate while they fit (38 significant digits); further fractional
    // digits may only be zeros, further integer digits are an overflow.
    let mut digits: i128 = 0;
    let mut significant = 0u32;
    let mut frac_digits: i64 = 0;
    let mut seen_point = false;
    let mut seen_digit = false;
    let mut dropped_nonzero = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c @ b'0'..=b'9' => {
                seen_digit = true;
                if significant < 38 {
                    digits = digits * 10 + (c - b'0') as i128;
                    if digits != 0 {
                        significant += 1;
                    }
                    frac_digits += seen_point as i64;
                } else if seen_point {
                    dropped_nonzero |= c != b'0';
                } else {
                    return Err("too many digits");
                }
            }
            b'.' if !seen_point => seen_point = true,
            b'e' | b'E' => break,
            _ => return Err("not a decimal number"),
        }
        i += 1;
    }
    if !seen_digit {
        return Err("not a decimal number");
    }
    let mut exp: i64 = 0;
    if i < b.len() {
        exp = std::str::from_utf8(&b[i + 1..])
            .ok()
            .and_then(|e| e.parse().ok())
            .ok_or("invalid exponent")?;
        if exp.abs() > 100 {
            return Err("exponent out of range");
        }
    }
    // value = digits * 10^(exp - frac_digits); unscaled = value * 10^scale
    let shift = exp - frac_digits + scale as i64;
    let mut v = digits;
    if shift >= 0 {
        for _ in 0..shift {
            v = v.checked_mul(10).ok_or("out of range")?;
        }
    } else {
        for _ in 0..(-shift) {
            if v % 10 != 0 {
                return Err("more fractional digits than the scale allows");
            }
            v /= 10;
        }
    }
    if dropped_nonzero {
        return Err("more fractional digits than the scale allows");
    }
    let limit = 10i128.checked_pow(precision as u32).unwrap_or(i128::MAX);
    if v >= limit {
        return Err("out of range for the precision");
    }
    Ok(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("1970-01-01T00:00:00Z", 0)]
    #[case("2025-03-17T08:20:57.865Z", 1_742_199_657_865_000)]
    #[case("2025-03-17T10:20:57.865+02:00", 1_742_199_657_865_000)]
    #[case("2025-03-17T03:20:57.865-0500", 1_742_199_657_865_000)]
    #[case("2025-03-17 08:20:57.865123456Z", 1_742_199_657_865_123)]
    #[case("1969-12-31T23:59:59Z", -1_000_000)]
    #[case("2024-02-29T00:00Z", 1_709_164_800_000_000)]
    fn timestamps_with_offset(#[case] s: &str, #[case] micros: i64) {
        assert_eq!(parse_timestamp(s, true, false), Ok(micros));
    }

    #[rstest]
    #[case("2025-03-17T08:20:57", "missing UTC offset (add Z or +HH:MM)")]
    #[case("2023-02-29T00:00:00Z", "no such date")]
    #[case("2025-13-01T00:00:00Z", "no such date")]
    #[case("2025-01-01T24:00:00Z", "time out of range")]
    #[case("yesterday", "not an ISO-8601 timestamp")]
    #[case("2025-01-01T00:00:00Zjunk", "trailing characters after timestamp")]
    fn bad_timestamps(#[case] s: &str, #[case] reason: &str) {
        assert_eq!(parse_timestamp(s, true, false), Err(reason));
    }

    #[test]
    fn timestamp_without_zone_accepts_missing_offset() {
        assert_eq!(
            parse_timestamp("1970-01-02", false, false),
            Ok(86_400_000_000)
        );
        assert_eq!(
            parse_timestamp("1970-01-01T00:00:00.000000001", false, true),
            Ok(1)
        );
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(parse_date("1970-01-01"), Ok(0));
        assert_eq!(parse_date("2000-03-01"), Ok(11_017));
        assert_eq!(parse_date("0001-01-01"), Ok(-719_162));
        assert!(parse_date("2000-02-30").is_err());
        assert_eq!(parse_time("12:34:56.789"), Ok(45_296_789_000));
        assert_eq!(parse_time("00:00"), Ok(0));
        assert!(parse_time("25:00:00").is_err());
    }

    #[rstest]
    #[case("12.34", 10, 2, Ok(1234))]
    #[case("-12.3", 10, 2, Ok(-1230))]
    #[case("12", 10, 2, Ok(1200))]
    #[case("1.5e2", 10, 2, Ok(15000))]
    #[case("1.200", 10, 2, Ok(120))]
    #[case("1.234", 10, 2, Err("more fractional digits than the scale allows"))]
    #[case("123456789.1", 10, 2, Err("out of range for the precision"))]
    #[case("abc", 10, 2, Err("not a decimal number"))]
    #[case(
        "99999999999999999999999999999999999999",
        38,
        0,
        Ok(99999999999999999999999999999999999999)
    )]
    fn decimals(
        #[case] s: &str,
        #[case] p: u8,
        #[case] sc: i8,
        #[case] expected: Result<i128, &'static str>,
    ) {
        assert_eq!(parse_decimal(s, p, sc), expected);
    }

    #[test]
    fn civil_days_match_chrono() {
        for (y, m, d) in [
            (1970, 1, 1),
            (2024, 2, 29),
            (1600, 3, 1),
            (-44, 3, 15),
            (9999, 12, 31),
        ] {
            let c = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
            assert_eq!(days_from_civil(y as i64, m, d), (c - epoch).num_days());
        }
    }
}
