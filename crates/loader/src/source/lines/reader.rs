//! Lines of bounded size from a file or stdin.
//!
//! [`LineReader`] hands out one line at a time, its `\n` aside. A line longer than the limit
//! (`limits.max_message_bytes`) is not held: once past the limit only its first
//! [`TOO_LARGE_KEPT_BYTES`] are kept, the rest is read through to the newline and only counted.
//! So memory never holds more than the limit or the kept start, whichever is larger (plus the
//! input's own buffer), whatever the input.

use std::io::{self, BufRead};

use floe_schema::decode::TOO_LARGE_KEPT_BYTES;

/// One line read.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line without its `\n`; only its start when [`Line::is_truncated`].
    pub bytes: &'a [u8],
    /// The line's length without its `\n`.
    pub size: u64,
    /// Bytes consumed from the input (the line and its `\n`).
    pub read: u64,
}

impl Line<'_> {
    /// Whether the line was longer than the limit (only its start is in `bytes`).
    pub fn is_truncated(&self) -> bool {
        self.size > self.bytes.len() as u64
    }
}

/// Reads lines of at most `limit` bytes whole; longer ones truncated.
pub struct LineReader<R> {
    input: R,
    limit: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    /// Lines of `input`, whole up to `limit` bytes.
    pub fn new(input: R, limit: usize) -> Self {
        Self {
            input,
            limit,
            buf: Vec::with_capacity(limit.min(1024)),
        }
    }

    /// The next line, or `None` at the end of the input. A last line without `\n` counts.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let mut size: u64 = 0;
        let mut read: u64 = 0;
        let mut truncated = false;
        loop {
            let available = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            let (chunk, ends) = match memchr::memchr(b'\n', available) {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            size += chunk.len() as u64;
            if !truncated && self.buf.len() + chunk.len() > self.limit {
                truncated = true;
                self.buf.truncate(TOO_LARGE_KEPT_BYTES);
            }
            let room = if truncated {
                TOO_LARGE_KEPT_BYTES.saturating_sub(self.buf.len())
            } else {
                chunk.len()
            };
            self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = chunk.len() + usize::from(ends);
            read += used as u64;
            self.input.consume(used);
            if ends {
                break;
            }
        }
        if read == 0 {
            return Ok(None);
        }
        Ok(Some(Line {
            bytes: &self.buf,
            size,
            read,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};

    use proptest::prelude::*;

    use super::*;

    /// Input that is `n` bytes of `fill` then a newline, generated as it is read (nothing
    /// holds the line), counting the most bytes a single read asked for.
    struct Generated {
        remaining: u64,
        fill: u8,
    }

    impl Read for Generated {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.remaining == 0 {
                return Ok(0);
            }
            let n = (out.len() as u64).min(self.remaining) as usize;
            out[..n].fill(self.fill);
            self.remaining -= n as u64;
            if self.remaining == 0 {
                out[n - 1] = b'\n';
            }
            Ok(n)
        }
    }

    fn all_lines(input: &[u8], limit: usize, capacity: usize) -> Vec<(Vec<u8>, u64, u64)> {
        let mut r = LineReader::new(BufReader::with_capacity(capacity, input), limit);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push((l.bytes.to_vec(), l.size, l.read));
        }
        out
    }

    #[test]
    fn a_huge_line_is_read_through_keeping_only_its_start() {
        let line = 300u64 << 20; // 300 MiB, never in memory
        let input = Generated {
            remaining: line + 1,
            fill: b'x',
        }
        .chain(&b"{\"next\":1}\n"[..]);
        let mut r = LineReader::new(BufReader::with_capacity(1 << 16, input), 1 << 20);
        let big = r.next_line().unwrap().unwrap();
        assert!(big.is_truncated());
        assert_eq!(big.size, line);
        assert_eq!(big.read, line + 1);
        assert_eq!(big.bytes.len(), TOO_LARGE_KEPT_BYTES);
        assert!(big.bytes.iter().all(|&b| b == b'x'));
        let next = r.next_line().unwrap().unwrap();
        assert_eq!(next.bytes, b"{\"next\":1}");
        assert!(!next.is_truncated());
        assert!(r.next_line().unwrap().is_none());
        // The reader's own buffer never grew past the limit.
        assert!(r.buf.capacity() <= 1 << 20, "{}", r.buf.capacity());
    }

    proptest! {
        /// Whatever the lines, the buffer size and the limit: every line comes back, whole
        /// when it fits the limit, else its first bytes (up to the kept size) with its size.
        #[test]
        fn lines_come_back_whole_or_truncated_with_their_size(
            lines in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'\r'), any::<u8>().prop_filter("no newline", |b| *b != b'\n')], 0..200), 0..20),
            final_newline in any::<bool>(),
            limit in 0usize..150,
            capacity in 1usize..64,
        ) {
            let mut input = lines.join(&b'\n');
            if final_newline && !lines.is_empty() {
                input.push(b'\n');
            }
            let got = all_lines(&input, limit, capacity);
            // A trailing empty line after the last newline is not a line.
            let mut want: Vec<&Vec<u8>> = lines.iter().collect();
            if !final_newline && want.last().is_some_and(|l| l.is_empty()) {
                want.pop();
            }
            prop_assert_eq!(got.len(), want.len());
            let mut total = 0;
            for ((bytes, size, read), line) in got.iter().zip(&want) {
                prop_assert_eq!(*size, line.len() as u64);
                if line.len() <= limit {
                    prop_assert_eq!(bytes, *line);
                } else {
                    let kept = line.len().min(TOO_LARGE_KEPT_BYTES);
                    prop_assert_eq!(&bytes[..], &line[..kept]);
                }
                total += read;
            }
            prop_assert_eq!(total, input.len() as u64);
        }
    }
}
