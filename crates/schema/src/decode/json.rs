//! A strict, allocation-free JSON scanner over one message's bytes.
//!
//! The decoder pulls tokens from it and writes values straight into column builders, so no
//! intermediate DOM is built. Input must already be valid UTF-8 (checked once per message).
//! Every malformed input yields a [`SyntaxError`]; nesting deeper than [`MAX_DEPTH`] is refused
//! so hostile payloads cannot exhaust the stack.

use std::borrow::Cow;

/// Deepest nesting accepted anywhere in a payload.
pub const MAX_DEPTH: usize = 128;

/// A grammar violation at a byte position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset in the payload.
    pub at: usize,
    /// What was expected or found.
    pub what: &'static str,
}

/// The kind of the next value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    Object,
    Array,
    String,
    Number,
    True,
    False,
    Null,
}

/// A scanned number token.
#[derive(Debug, Clone, Copy)]
pub struct Number<'a> {
    /// The token text, e.g. `-12.5e3`.
    pub text: &'a str,
    /// The value when the token is an integer literal (no fraction, no exponent) that fits i64.
    pub int: Option<i64>,
    /// Whether the token has a fraction or exponent part.
    pub is_float: bool,
}

impl Number<'_> {
    /// The value as f64 (finite for every valid token except overflowing exponents).
    pub fn as_f64(&self) -> f64 {
        match self.int {
            Some(i) => i as f64,
            None => self.text.parse().unwrap_or(f64::NAN),
        }
    }
}

pub struct Cursor<'a> {
    /// Always valid UTF-8 (constructed from `&str`); string slices cut at ASCII quotes and
    /// backslashes therefore stay valid UTF-8 without re-checking.
    buf: &'a [u8],
    pos: usize,
}

/// A slice of the payload between ASCII delimiters.
#[inline(always)]
fn utf8(b: &[u8]) -> &str {
    // SAFETY: `Cursor::buf` comes from a `&str` and every slice taken here starts and ends at
    // an ASCII byte (quote, backslash, control character) or the buffer's ends, which are char
    // boundaries, so the slice is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(b) }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

#[inline(always)]
fn has_zero_byte(v: u64) -> u64 {
    v.wrapping_sub(LO) & !v & HI
}

#[inline(always)]
fn has_less_than(v: u64, n: u8) -> u64 {
    v.wrapping_sub(LO.wrapping_mul(n as u64)) & !v & HI
}

impl<'a> Cursor<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            buf: text.as_bytes(),
            pos: 0,
        }
    }

    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Moves back to an earlier position (to describe a value in an error message).
    pub fn set_pos(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    #[inline]
    pub fn err<T>(&self, what: &'static str) -> Result<T, SyntaxError> {
        Err(SyntaxError { at: self.pos, what })
    }

    #[inline]
    pub fn skip_ws(&mut self) {
        while let Some(&b) = self.buf.get(self.pos) {
            if b == b' ' || b == b'\n' || b == b'\r' || b == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Skips white space and tells whether input is exhausted.
    pub fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.buf.len()
    }

    /// Skips white space and classifies the next value.
    #[inline]
    pub fn peek(&mut self) -> Result<Peek, SyntaxError> {
        self.skip_ws();
        match self.buf.get(self.pos) {
            Some(b'{') => Ok(Peek::Object),
            Some(b'[') => Ok(Peek::Array),
            Some(b'"') => Ok(Peek::String),
            Some(b'-' | b'0'..=b'9') => Ok(Peek::Number),
            Some(b't') => Ok(Peek::True),
            Some(b'f') => Ok(Peek::False),
            Some(b'n') => Ok(Peek::Null),
            Some(_) => self.err("expected a JSON value"),
            None => self.err("unexpected end of input"),
        }
    }

    #[inline]
    fn expect_byte(&mut self, b: u8, what: &'static str) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.buf.get(self.pos) == Some(&b) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    /// Consumes `true`, `false` or `null` (after [`Self::peek`] said which).
    #[inline]
    pub fn literal(&mut self, text: &'static [u8]) -> Result<(), SyntaxError> {
        if self.buf[self.pos..].starts_with(text) {
            self.pos += text.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    /// Consumes `{` and tells whether the object is empty (consuming `}` too if so).
    #[inline]
    pub fn begin_object(&mut self) -> Result<bool, SyntaxError> {
        self.expect_byte(b'{', "expected '{'")?;
        self.skip_ws();
        if self.buf.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Consumes `[` and tells whether the array is empty (consuming `]` too if so).
    #[inline]
    pub fn begin_array(&mut self) -> Result<bool, SyntaxError> {
        self.expect_byte(b'[', "expected '['")?;
        self.skip_ws();
        if self.buf.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads an object key and the following `:`.
    #[inline]
    pub fn key<'s>(&mut self, scratch: &'s mut String) -> Result<Cow<'s, str>, SyntaxError>
    where
        'a: 's,
    {
        self.skip_ws();
        if self.buf.get(self.pos) != Some(&b'"') {
            return self.err("expected a string key");
        }
        let k = self.string(scratch)?;
        self.expect_byte(b':', "expected ':' after key")?;
        Ok(k)
    }

    /// After a member/element: `true` if another follows (`,` consumed), `false` at the closer.
    #[inline]
    pub fn next_member(&mut self, close: u8) -> Result<bool, SyntaxError> {
        self.skip_ws();
        match self.buf.get(self.pos) {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(&c) if c == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => self.err(if close == b'}' {
                "expected ',' or '}'"
            } else {
                "expected ',' or ']'"
            }),
        }
    }

    /// Reads a string value (the cursor is on its opening quote). Borrowed when it has no
    /// escapes, else unescaped into `scratch`.
    #[inline]
    pub fn string<'s>(&mut self, scratch: &'s mut String) -> Result<Cow<'s, str>, SyntaxError>
    where
        'a: 's,
    {
        debug_assert_eq!(self.buf.get(self.pos), Some(&b'"'));
        self.pos += 1;
        let start = self.pos;
        let buf = self.buf;
        let mut i = start;
        // Eight bytes at a time: stop at '"', '\\' or a control character.
        while i + 8 <= buf.len() {
            let v = u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
            let hit = has_zero_byte(v ^ (LO * b'"' as u64))
                | has_zero_byte(v ^ (LO * b'\\' as u64))
                | has_less_than(v, 0x20);
            if hit != 0 {
                i += (hit.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        loop {
            match buf.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(Cow::Borrowed(utf8(&buf[start..i])));
                }
                Some(b'\\') => {
                    self.pos = i;
                    scratch.clear();
                    scratch.push_str(utf8(&buf[start..i]));
                    self.unescape_rest(scratch)?;
                    return Ok(Cow::Owned(std::mem::take(scratch)));
                }
                Some(&b) if b < 0x20 => {
                    self.pos = i;
                    return self.err("control character in string");
                }
                Some(_) => i += 1,
                None => {
                    self.pos = i;
                    return self.err("unterminated string");
                }
            }
        }
    }

    /// Continues a string with escapes, appending to `out`; the cursor is on a backslash or
    /// ordinary character inside the string.
    fn unescape_rest(&mut self, out: &mut String) -> Result<(), SyntaxError> {
        let buf = self.buf;
        loop {
            let run_start = self.pos;
            while let Some(&b) = buf.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(utf8(&buf[run_start..self.pos]));
            match buf.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = match buf.get(self.pos) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if buf.get(self.pos) != Some(&b'\\')
                                    || buf.get(self.pos + 1) != Some(&b'u')
                                {
                                    return self.err("unpaired surrogate in \\u escape");
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("unpaired surrogate in \\u escape");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return self.err("unpaired surrogate in \\u escape");
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code).ok_or(SyntaxError {
                                at: self.pos,
                                what: "invalid \\u escape",
                            })?);
                            continue;
                        }
                        _ => return self.err("invalid escape in string"),
                    };
                    self.pos += 1;
                    out.push(c);
                }
                Some(_) => return self.err("control character in string"),
                None => return self.err("unterminated string"),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let Some(digits) = self.buf.get(self.pos..self.pos + 4) else {
            return self.err("truncated \\u escape");
        };
        let mut v = 0u32;
        for &d in digits {
            let n = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return self.err("invalid \\u escape"),
            };
            v = v * 16 + n as u32;
        }
        self.pos += 4;
        Ok(v)
    }

    /// Reads a number token (the cursor is on `-` or a digit).
    #[inline]
    pub fn number(&mut self) -> Result<Number<'a>, SyntaxError> {
        let buf = self.buf;
        let start = self.pos;
        let mut i = start;
        let neg = buf.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let int_start = i;
        let mut acc: u64 = 0;
        let mut overflow = false;
        match buf.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d) = buf.get(i) {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    match acc
                        .checked_mul(10)
                        .and_then(|a| a.checked_add((d - b'0') as u64))
                    {
                        Some(a) => acc = a,
                        None => overflow = true,
                    }
                    i += 1;
                }
            }
            _ => {
                self.pos = i;
                return self.err("invalid number");
            }
        }
        let _ = int_start;
        let mut is_float = false;
        if buf.get(i) == Some(&b'.') {
            is_float = true;
            i += 1;
            let d0 = i;
            while buf.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == d0 {
                self.pos = i;
                return self.err("invalid number: digits expected after '.'");
            }
        }
        if matches!(buf.get(i), Some(b'e' | b'E')) {
            is_float = true;
            i += 1;
            if matches!(buf.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let d0 = i;
            while buf.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == d0 {
                self.pos = i;
                return self.err("invalid number: digits expected in exponent");
            }
        }
        self.pos = i;
        // Number tokens are ASCII.
        let text = utf8(&buf[start..i]);
        let int = if is_float || overflow {
            None
        } else if neg {
            if acc <= i64::MAX as u64 + 1 {
                Some((acc as i64).wrapping_neg())
            } else {
                None
            }
        } else {
            i64::try_from(acc).ok()
        };
        Ok(Number {
            text,
            int,
            is_float,
        })
    }

    /// Skips one value of any kind, validating it.
    pub fn skip_value(&mut self, depth: usize) -> Result<(), SyntaxError> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        match self.peek()? {
            Peek::Object => {
                if !self.begin_object()? {
                    let mut scratch = String::new();
                    loop {
                        self.key(&mut scratch)?;
                        self.skip_value(depth + 1)?;
                        if !self.next_member(b'}')? {
                            break;
                        }
                    }
                }
                Ok(())
            }
            Peek::Array => {
                if !self.begin_array()? {
                    loop {
                        self.skip_value(depth + 1)?;
                        if !self.next_member(b']')? {
                            break;
                        }
                    }
                }
                Ok(())
            }
            Peek::String => self.skip_string(),
            Peek::Number => self.number().map(|_| ()),
            Peek::True => self.literal(b"true"),
            Peek::False => self.literal(b"false"),
            Peek::Null => self.literal(b"null"),
        }
    }

    fn skip_string(&mut self) -> Result<(), SyntaxError> {
        let mut scratch = String::new();
        self.string(&mut scratch).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(input: &str) -> Result<String, SyntaxError> {
        let mut c = Cursor::new(input);
        let mut scratch = String::new();
        c.peek()?;
        c.string(&mut scratch).map(|v| v.into_owned())
    }

    #[test]
    fn strings_with_and_without_escapes() {
        assert_eq!(
            s(r#""plain text here, long enough""#).unwrap(),
            "plain text here, long enough"
        );
        assert_eq!(s(r#""a\"b\\c\/d\n""#).unwrap(), "a\"b\\c/d\n");
        assert_eq!(s(r#""\u00e9\ud83d\ude00""#).unwrap(), "é😀");
        assert_eq!(s("\"héllo wörld ünïcode\"").unwrap(), "héllo wörld ünïcode");
        assert!(s(r#""\ud83d""#).is_err());
        assert!(s(r#""\x""#).is_err());
        assert!(s("\"tab\there\"").is_err());
        assert!(s("\"unterminated").is_err());
    }

    #[test]
    fn numbers() {
        let n = |t: &str| {
            let mut c = Cursor::new(t);
            c.number().map(|n| (n.int, n.is_float, c.pos()))
        };
        assert_eq!(n("123").unwrap(), (Some(123), false, 3));
        assert_eq!(n("-0").unwrap(), (Some(0), false, 2));
        assert_eq!(n("-9223372036854775808").unwrap().0, Some(i64::MIN));
        assert_eq!(n("9223372036854775808").unwrap().0, None);
        assert_eq!(n("99999999999999999999999").unwrap().0, None);
        assert_eq!(n("1.5e3").unwrap(), (None, true, 5));
        assert!(n("-").is_err());
        assert!(n("1.").is_err());
        assert!(n("1e").is_err());
        // A leading zero ends the token; the caller then sees trailing garbage.
        assert_eq!(n("01").unwrap().2, 1);
    }

    #[test]
    fn skipping_is_depth_limited() {
        let deep = "[".repeat(MAX_DEPTH + 5) + &"]".repeat(MAX_DEPTH + 5);
        let mut c = Cursor::new(&deep);
        assert!(c.skip_value(0).is_err());
        let ok = r#"{"a":[1,2,{"b":null}],"c":"d","e":true,"f":false}"#;
        let mut c = Cursor::new(ok);
        c.skip_value(0).unwrap();
        assert!(c.at_end());
    }
}
