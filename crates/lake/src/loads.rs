//! Loads of files and streams recorded with the data they loaded (`floe load`'s COPY INTO
//! semantics).
//!
//! A load is identified by an id: for a file, the fingerprint of its content (so a file loaded
//! twice, under any path, is loaded once, and a changed file at the same path is a new file);
//! for stdin, an id of its own. Every commit of a load records, in the same metadata file as
//! its data, how far the load got: table property `floe.loads`, JSON `{"<id>": {"source":
//! "<path>", "next": <next line to read>, "done": <bool>, "at": <epoch ms>}}` (one value per
//! table, like the offsets: see [`crate::state`]). A load run again skips the lines a table
//! holds, and skips a finished file outright.
//!
//! Each commit says the line it resumed from (`base`): a commit whose base is not the table's
//! recorded `next` is refused ([`crate::Error::LoadConflict`]), so two runs of one load racing
//! cannot both land a line.
//!
//! The marks are bounded: a commit drops marks older than
//! `floe.load-history.max-age-days` (default 64, as long as Snowflake keeps its load
//! metadata) and keeps at most `floe.load-history.max-entries` (default 1000, newest first).
//! A file whose mark was dropped loads again if run again.

use std::collections::BTreeMap;

use iceberg::spec::TableMetadata;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The table property holding the marks.
pub const LOADS_KEY: &str = "floe.loads";
/// Table property: days a load's mark is kept after its last commit.
pub const MAX_AGE_DAYS_KEY: &str = "floe.load-history.max-age-days";
/// Table property: most load marks kept.
pub const MAX_ENTRIES_KEY: &str = "floe.load-history.max-entries";
/// Default of [`MAX_AGE_DAYS_KEY`].
pub const DEFAULT_MAX_AGE_DAYS: i64 = 64;
/// Default of [`MAX_ENTRIES_KEY`].
pub const DEFAULT_MAX_ENTRIES: usize = 1000;

/// How far one load got in a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadMark {
    /// Where the load read from (a path, `stdin`): for people, not for matching.
    pub source: String,
    /// The next line to read (1-based): every line before it is in the table, or was a dead
    /// letter (in the dead-letter table's own mark).
    pub next: i64,
    /// The load read its input to the end.
    pub done: bool,
    /// When the mark was last written (epoch milliseconds).
    pub at: i64,
}

/// Every load's mark, by load id.
pub type LoadMarks = BTreeMap<String, LoadMark>;

/// What a commit of a load records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadUpdate {
    /// The load's id.
    pub id: String,
    /// Where it reads from.
    pub source: String,
    /// The table's `next` this run continued from (1 for a load the table has no mark of).
    pub base: i64,
    /// The next line to read after this commit.
    pub next: i64,
    /// The commit ends the load.
    pub done: bool,
}

/// The load marks of a table.
pub fn load_marks(metadata: &TableMetadata) -> Result<LoadMarks> {
    match metadata.properties().get(LOADS_KEY) {
        None => Ok(LoadMarks::new()),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::Config(format!(
                "the table's {LOADS_KEY} property is unreadable ({e}); remove it to load every \
                 file as new"
            ))
        }),
    }
}

/// The mark of load `id` in a table, if it has one.
pub fn load_mark(metadata: &TableMetadata, id: &str) -> Result<Option<LoadMark>> {
    Ok(load_marks(metadata)?.remove(id))
}

/// `marks` with `update` applied at `now_ms`, pruned to the table's limits. Refuses an update
/// whose base is not the recorded `next` (another run of the load committed meanwhile).
pub fn merge_load(
    table: &str,
    metadata: &TableMetadata,
    update: &LoadUpdate,
    now_ms: i64,
) -> Result<LoadMarks> {
    let mut marks = load_marks(metadata)?;
    let recorded = marks.get(&update.id).map_or(1, |m| m.next);
    if recorded != update.base {
        return Err(Error::LoadConflict {
            table: table.to_string(),
            id: update.id.clone(),
            recorded,
            base: update.base,
        });
    }
    marks.insert(
        update.id.clone(),
        LoadMark {
            source: update.source.clone(),
            next: update.next.max(recorded),
            done: update.done,
            at: now_ms,
        },
    );
    prune(&mut marks, metadata, &update.id, now_ms);
    Ok(marks)
}

/// Drops marks past the table's age and count limits (never `keep`).
fn prune(marks: &mut LoadMarks, metadata: &TableMetadata, keep: &str, now_ms: i64) {
    let props = metadata.properties();
    let max_age_days: i64 = props
        .get(MAX_AGE_DAYS_KEY)
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_AGE_DAYS);
    let max_entries: usize = props
        .get(MAX_ENTRIES_KEY)
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_ENTRIES)
        .max(1);
    let oldest = now_ms.saturating_sub(max_age_days.max(0).saturating_mul(86_400_000));
    marks.retain(|id, m| id == keep || m.at >= oldest);
    if marks.len() > max_entries {
        let mut by_age: Vec<(i64, String)> = marks
            .iter()
            .filter(|(id, _)| id.as_str() != keep)
            .map(|(id, m)| (m.at, id.clone()))
            .collect();
        by_age.sort();
        let excess = marks.len() - max_entries;
        for (_, id) in by_age.into_iter().take(excess) {
            marks.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn metadata(props: HashMap<String, String>) -> TableMetadata {
        let schema = iceberg::spec::Schema::builder()
            .with_fields(vec![std::sync::Arc::new(
                iceberg::spec::NestedField::required(
                    1,
                    "id",
                    iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Long),
                ),
            )])
            .build()
            .unwrap();
        iceberg::spec::TableMetadataBuilder::new(
            schema,
            iceberg::spec::PartitionSpec::unpartition_spec(),
            iceberg::spec::SortOrder::unsorted_order(),
            "file:///tmp/t".into(),
            iceberg::spec::FormatVersion::V2,
            props,
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata
    }

    fn update(id: &str, base: i64, next: i64) -> LoadUpdate {
        LoadUpdate {
            id: id.into(),
            source: format!("/data/{id}.jsonl"),
            base,
            next,
            done: false,
        }
    }

    fn with_marks(marks: &LoadMarks, mut props: HashMap<String, String>) -> TableMetadata {
        props.insert(LOADS_KEY.into(), serde_json::to_string(marks).unwrap());
        metadata(props)
    }

    #[test]
    fn a_commit_must_continue_from_the_recorded_line() {
        let m = metadata(HashMap::new());
        let marks = merge_load("t", &m, &update("a", 1, 100), 1_000).unwrap();
        assert_eq!(marks["a"].next, 100);
        let m = with_marks(&marks, HashMap::new());
        let marks = merge_load("t", &m, &update("a", 100, 250), 2_000).unwrap();
        assert_eq!(marks["a"].next, 250);
        let m = with_marks(&marks, HashMap::new());
        // A second run that read the mark before the first committed again.
        let err = merge_load("t", &m, &update("a", 100, 300), 3_000).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LoadConflict {
                    recorded: 250,
                    base: 100,
                    ..
                }
            ),
            "{err}"
        );
        // A load the table has no mark of starts at line 1.
        let err = merge_load("t", &m, &update("b", 7, 9), 3_000).unwrap_err();
        assert!(
            matches!(err, Error::LoadConflict { recorded: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn marks_are_bounded_by_age_and_count() {
        let day = 86_400_000;
        let mut marks = LoadMarks::new();
        for i in 0..10 {
            marks.insert(
                format!("old{i}"),
                LoadMark {
                    source: "x".into(),
                    next: 5,
                    done: true,
                    at: i * day,
                },
            );
        }
        let now = 70 * day;
        // Marks older than 64 days (at < 6 days) go.
        let m = with_marks(&marks, HashMap::new());
        let merged = merge_load("t", &m, &update("new", 1, 2), now).unwrap();
        let ids: Vec<&str> = merged.keys().map(String::as_str).collect();
        assert_eq!(ids, ["new", "old6", "old7", "old8", "old9"]);
        // A count limit keeps the newest, and always the load being committed.
        let props = HashMap::from([
            (MAX_ENTRIES_KEY.to_string(), "2".to_string()),
            (MAX_AGE_DAYS_KEY.to_string(), "1000".to_string()),
        ]);
        let m = with_marks(&marks, props);
        let merged = merge_load("t", &m, &update("new", 1, 2), now).unwrap();
        let ids: Vec<&str> = merged.keys().map(String::as_str).collect();
        assert_eq!(ids, ["new", "old9"]);
    }

    #[test]
    fn an_unreadable_property_is_named() {
        let m = metadata(HashMap::from([(LOADS_KEY.to_string(), "{".to_string())]));
        let err = load_marks(&m).unwrap_err().to_string();
        assert!(err.contains(LOADS_KEY), "{err}");
    }
}
