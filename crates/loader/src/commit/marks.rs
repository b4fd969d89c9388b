//! What a table's commit records beside its rows, so that no retried flush and no rerun lands
//! twice: the offset ranges the rows came from (`floe run`), or how far a load got
//! (`floe load`, [`floe_lake::loads`]).

use floe_lake::loads::{LoadMark, LoadUpdate};

/// What a pipeline's commits record.
#[derive(Debug, Clone)]
pub(crate) enum Marks {
    /// The offset ranges of the batch, for consumer group `group`.
    Offsets { group: String },
    /// How far the load got in each table.
    Load(LoadProgress),
}

/// How far a load got in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The next line to read: every line before it is in the table.
    pub next: i64,
    /// The whole input is in the table.
    pub done: bool,
}

impl Mark {
    /// A table that needs nothing of the load (no dead-letter table): every line, done.
    pub const ALL: Mark = Mark {
        next: i64::MAX,
        done: true,
    };

    /// Where a table with `mark` stands (a table without a mark: line 1).
    pub fn of(mark: Option<&LoadMark>) -> Self {
        mark.map_or(
            Self {
                next: 1,
                done: false,
            },
            |m| Self {
                next: m.next,
                done: m.done,
            },
        )
    }
}

impl From<&LoadUpdate> for Mark {
    fn from(u: &LoadUpdate) -> Self {
        Self {
            next: u.next,
            done: u.done,
        }
    }
}

/// A load in progress: its id, where it reads from, and how far it got in each table.
#[derive(Debug, Clone)]
pub(crate) struct LoadProgress {
    pub id: String,
    pub source: String,
    pub target: Mark,
    /// [`Mark::ALL`] without a dead-letter table.
    pub dead: Mark,
}

impl LoadProgress {
    /// What a table at `at` records when the load got to `to`; `None` when it has nothing
    /// new to record (no rows, and its mark would not move).
    pub fn update(&self, to: Mark, at: Mark, has_rows: bool) -> Option<LoadUpdate> {
        let next = to.next.max(at.next);
        (has_rows || next > at.next || to.done != at.done).then(|| LoadUpdate {
            id: self.id.clone(),
            source: self.source.clone(),
            base: at.next,
            next,
            done: to.done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(next: i64, done: bool) -> Mark {
        Mark { next, done }
    }

    #[test]
    fn a_table_records_a_load_only_when_its_mark_moves_or_rows_come() {
        let load = LoadProgress {
            id: "sha256:ab".into(),
            source: "/in.jsonl".into(),
            target: Mark::of(None),
            dead: Mark::ALL,
        };
        assert_eq!(load.target, at(1, false));
        let u = load.update(at(31, false), load.target, false).unwrap();
        assert_eq!((u.base, u.next, u.done), (1, 31, false));
        // Already there: nothing to record, unless rows come with it.
        assert!(load.update(at(31, false), at(31, false), false).is_none());
        let u = load.update(at(31, false), at(31, false), true).unwrap();
        assert_eq!((u.base, u.next), (31, 31));
        // The end of the input is recorded even without new lines.
        let u = load.update(at(31, true), at(31, false), false).unwrap();
        assert!(u.done);
        // A table ahead of the reader (an earlier run got further) keeps its mark.
        let u = load.update(at(10, true), at(40, false), false).unwrap();
        assert_eq!((u.base, u.next), (40, 40));
        // A table that needs nothing of the load records nothing.
        assert!(load.update(at(61, true), load.dead, false).is_none());
    }
}
