//! The one line a failed command prints: its error chain without repeats, secrets masked, and
//! for a full disk what is full and what to do.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Local folders floe writes to (the warehouse, the SQLite catalog's folder), with what they
/// hold, named when a write fails for lack of space.
static STORAGE: OnceLock<Vec<(&'static str, PathBuf)>> = OnceLock::new();

/// Records the local folders of `catalog` for [`report`].
pub fn set_storage(catalog: &floe_lake::CatalogConfig) {
    let mut dirs = Vec::new();
    if let Some((path, _)) = catalog.sqlite_file()
        && let Ok(abs) = std::path::absolute(path)
    {
        dirs.push((
            "catalog",
            abs.parent().map(Path::to_path_buf).unwrap_or(abs),
        ));
    }
    let warehouse = catalog.warehouse.as_str();
    let local = match warehouse.strip_prefix("file://") {
        Some(p) => Some(p),
        None if !warehouse.contains("://") => Some(warehouse),
        None => None,
    };
    if let Some(p) = local
        && let Ok(abs) = std::path::absolute(p)
    {
        dirs.push(("warehouse", abs));
    }
    let _ = STORAGE.set(dirs);
}

/// The message for `e`: each cause once (libraries repeat their sources in their own
/// messages), secrets masked, and when a write failed for lack of space, which folder is full
/// and what to do.
pub fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || text.contains(&msg) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&msg);
    }
    let text = collapse_repeats(&text);
    let mut out = floe_lake::catalog::redact_text(&text);
    if let Some(hint) = disk_hint(e, &out) {
        out.push_str("\n  ");
        out.push_str(&hint);
    }
    out
}

/// Drops a `": <tail>"` that repeats text already said (iceberg-rust prints an error's
/// source inside its message and again as the source).
fn collapse_repeats(text: &str) -> String {
    let parts: Vec<&str> = text.split(": ").collect();
    let mut kept: Vec<&str> = Vec::with_capacity(parts.len());
    let mut i = 0;
    'outer: while i < parts.len() {
        // The longest run starting at i that repeats the run just before it.
        for len in (1..=kept.len().min(parts.len() - i)).rev() {
            if parts[i..i + len] == kept[kept.len() - len..] {
                i += len;
                continue 'outer;
            }
        }
        kept.push(parts[i]);
        i += 1;
    }
    kept.join(": ")
}

/// Whether the error says a write found no space (ENOSPC, SQLite's "disk is full"), or an
/// I/O error where a storage folder is out of space; then the folders and their free space.
fn disk_hint(e: &anyhow::Error, text: &str) -> Option<String> {
    let io_full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(28))
    });
    let lower = text.to_lowercase();
    let says_full = io_full
        || lower.contains("no space left on device")
        || lower.contains("os error 28")
        || lower.contains("database or disk is full");
    let says_io = lower.contains("disk i/o error") || lower.contains("unable to open database");
    let dirs = STORAGE.get().map(Vec::as_slice).unwrap_or_default();
    let mut full = Vec::new();
    for (what, dir) in dirs {
        let Some(free) = free_bytes(dir) else {
            continue;
        };
        // A folder with less than 1 MiB free cannot take one more metadata file.
        if free < 1 << 20 {
            full.push(format!(
                "{what} {} has {} free",
                dir.display(),
                bytesize::ByteSize(free)
            ));
        }
    }
    let io_on_full_disk = says_io && !full.is_empty();
    if !(says_full || io_on_full_disk) {
        return None;
    }
    let where_ = if full.is_empty() {
        "the folder written to".to_string()
    } else {
        full.join(", ")
    };
    Some(format!(
        "no space left on the device: {where_}. Free space there and run the command again: \
         nothing was half-committed (every commit is whole, and `floe load` resumes after its \
         last one)."
    ))
}

/// Bytes available to floe on the filesystem holding `dir` (or its nearest existing parent).
fn free_bytes(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_sources_are_said_once() {
        let t = "iceberg: Unexpected => Failed to finish parquet writer., source: External: \
                 Failed to write: No space left on device (os error 28): External: Failed to \
                 write: No space left on device (os error 28)";
        let c = collapse_repeats(t);
        assert_eq!(c.matches("os error 28").count(), 1, "{c}");
        assert_eq!(collapse_repeats("a: b: c"), "a: b: c");
        assert_eq!(collapse_repeats("a: b: b: c"), "a: b: c");
    }

    #[test]
    fn a_full_disk_is_named() {
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(28)).context("writing x");
        let r = report(&e);
        assert!(r.contains("no space left on the device"), "{r}");
        let e = anyhow::anyhow!("table lake.t does not exist");
        assert!(!report(&e).contains("no space"));
    }
}

/// Log output with secrets masked ([`floe_lake::catalog::redact_text`]): a log line may quote
/// a URI or a setting (a driver's error, a librdkafka message) like an error does.
#[derive(Clone, Copy)]
pub struct Redacting<M>(pub M);

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for Redacting<M>
{
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.0.make_writer(),
            buf: Vec::new(),
        }
    }
}

/// Holds one event's text and writes it masked when dropped (the formatter makes a writer per
/// event).
pub struct RedactingWriter<W: std::io::Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let text = String::from_utf8_lossy(&self.buf);
            self.inner
                .write_all(floe_lake::catalog::redact_text(&text).as_bytes())?;
            self.buf.clear();
        }
        self.inner.flush()
    }
}

impl<W: std::io::Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

#[cfg(test)]
mod log_tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_are_masked() {
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(Redacting(move || sink.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                uri = "postgres://floe:hunter2@db/floe?password=hunter3",
                "cannot reach s3://k:sekret@minio/b"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("cannot reach"), "{text}");
        for secret in ["hunter2", "hunter3", "sekret"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
