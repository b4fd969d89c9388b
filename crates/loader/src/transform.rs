//! The transform stage of a table's loading: computed columns and rules (`floe-transform`)
//! applied to each chunk of decoded rows before any writer sees it.
//!
//! Until its chunk is transformed, every decoded row's source (coordinates, key, payload,
//! headers) is kept, so a row that a rule or a computed column rejects becomes a dead letter
//! like a decode failure: each message still lands once, in the table or among the dead
//! letters. Metrics count rows per transform and per rule.

use std::collections::{BTreeMap, HashMap};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::DataType;
use floe_schema::dead_letter::DeadLetter;
use floe_schema::{
    Decoder, DecoderOptions, Mapping, MappingError, PartitionRange, RecordMeta, Setting,
};
use floe_transform::{Applied, MetaRows, Rejection, Transform};
use iceberg::spec::TableMetadata;

use crate::Error;
use crate::telemetry as m;

/// The decoder and the transform stage for loading into `table` (its `metadata`) with
/// `pipeline`'s mapping laid over the table's own (`floe.*` properties). Every entry is
/// checked against the table's current schema; a mapping error names the entry and where it
/// was set (`section`, e.g. `pipelines[0]`, or the table property) as [`Error::Config`].
pub fn prepare(
    table: &str,
    metadata: &TableMetadata,
    pipeline: &Mapping,
    section: &str,
) -> crate::Result<(Decoder, Option<Stage>)> {
    let (options, stage) = check(table, metadata, pipeline, section).map_err(Error::Config)?;
    Ok((Decoder::new(metadata.current_schema(), &options)?, stage))
}

/// One entry of the mapping in force for a table, with where it is set.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MappingEntry {
    /// The setting's config key (`columns.user_id`, `rules.positive`).
    pub setting: String,
    /// Its value.
    pub value: String,
    /// Where it is set: `table property floe.…` or `pipelines[0].…`.
    pub from: String,
}

/// The mapping in force for a table (`floe table show`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MappingInForce {
    /// Its entries: the table's `floe.*` properties with the pipeline's laid over them.
    pub entries: Vec<MappingEntry>,
    /// Why it does not work against the table's current schema, if it does not.
    pub problem: Option<String>,
}

/// The mapping in force for `table` (its `metadata`): its `floe.*` properties with
/// `pipeline`'s entries (configured in `section`) laid over them, each with where it comes
/// from; then whether it works against the current schema.
pub fn mapping_in_force(
    table: &str,
    metadata: &TableMetadata,
    pipeline: &Mapping,
    section: &str,
) -> MappingInForce {
    let own = Mapping::from_table_properties(metadata.properties());
    let mut entries: BTreeMap<Setting, (String, String)> = own
        .entries()
        .into_iter()
        .map(|(s, v)| {
            let from = format!("table property {}", s.property_key());
            (s.clone(), (v.to_string(), from))
        })
        .collect();
    for (s, v) in pipeline.entries() {
        let from = format!("{section}.{}", s.config_key());
        entries.insert(s, (v.to_string(), from));
    }
    let problem = prepare(table, metadata, pipeline, section)
        .err()
        .map(|e| match e {
            Error::Config(message) => message,
            other => other.to_string(),
        });
    MappingInForce {
        entries: entries
            .into_iter()
            .map(|(s, (value, from))| MappingEntry {
                setting: s.config_key(),
                value,
                from,
            })
            .collect(),
        problem,
    }
}

fn check(
    table: &str,
    metadata: &TableMetadata,
    pipeline: &Mapping,
    section: &str,
) -> Result<(DecoderOptions, Option<Stage>), String> {
    let schema = metadata.current_schema();
    let own = Mapping::from_table_properties(metadata.properties());
    let in_section = |e: MappingError| e.under(section);
    pipeline.check_decoding(schema).map_err(in_section)?;
    own.check_decoding(schema).map_err(|e| e.in_table(table))?;
    Transform::new(schema, pipeline).map_err(in_section)?;
    Transform::new(schema, &own).map_err(|e| e.in_table(table))?;
    let options = DecoderOptions::for_table(metadata, pipeline);
    let stage = Stage::new(table, schema, &options.mapping)
        .map_err(in_section)?
        .map(|s| s.with_ranges(&options.partition_ranges));
    Ok((options, stage))
}

/// Where a decoded row came from, and which tables still need it. Packed (40 bytes): one is
/// kept per decoded row until its chunk is transformed; its key and payload are in the
/// chunk's byte buffer, its headers (rarely any) in a side table.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    offset: i64,
    timestamp_ms: i64,
    /// Where the key (then the payload) starts in the chunk's bytes.
    at: usize,
    key_len: u32,
    payload_len: u32,
    partition: i32,
    topic: u16,
    flags: u8,
}

const TO_RAW: u8 = 1;
const TO_DLQ: u8 = 2;
const TO_AGGS: u8 = 4;
const HAS_PARTITION: u8 = 8;
const HAS_OFFSET: u8 = 16;
const HAS_TIMESTAMP: u8 = 32;
const HAS_KEY: u8 = 64;

impl Source {
    /// The raw table still needs the row (it is not a row only checked for the dead letters).
    pub fn to_raw(&self) -> bool {
        self.flags & TO_RAW != 0
    }

    /// The dead-letter table still needs the message.
    pub fn to_dlq(&self) -> bool {
        self.flags & TO_DLQ != 0
    }

    /// Some aggregate table still needs the row.
    pub fn to_aggs(&self) -> bool {
        self.flags & TO_AGGS != 0
    }

    /// Kafka partition.
    pub fn partition(&self) -> Option<i32> {
        (self.flags & HAS_PARTITION != 0).then_some(self.partition)
    }

    /// Kafka offset (or line number).
    pub fn offset(&self) -> Option<i64> {
        (self.flags & HAS_OFFSET != 0).then_some(self.offset)
    }

    /// Message timestamp, epoch millis.
    pub fn timestamp_ms(&self) -> Option<i64> {
        (self.flags & HAS_TIMESTAMP != 0).then_some(self.timestamp_ms)
    }

    fn key<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        (self.flags & HAS_KEY != 0).then(|| &bytes[self.at..self.at + self.key_len as usize])
    }

    fn payload<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        let start = self.at + self.key_len as usize;
        &bytes[start..start + self.payload_len as usize]
    }
}

/// A rejected row, ready to be a dead letter.
#[derive(Debug)]
pub struct Rejected {
    /// Where it came from.
    pub source: Source,
    /// Why.
    pub why: Rejection,
    /// Its dead letter (source coordinates, payload, headers and reason).
    pub dead_letter: DeadLetter,
}

/// A chunk after the stage.
#[derive(Debug)]
pub struct Staged {
    /// The rows that passed, in the table's schema.
    pub rows: RecordBatch,
    /// Which decoded rows are in `rows` (`None`: all).
    pub kept: Option<BooleanArray>,
    /// Per decoded row, in order: (the raw table needs it, an aggregate needs it).
    pub needed: Vec<(bool, bool)>,
    /// The rejected rows.
    pub rejected: Vec<Rejected>,
}

/// A table's transform with the sources of the rows decoded since the last chunk.
pub struct Stage {
    work: Work,
    /// Its buffers are cleared, not freed, between chunks (their capacity saves regrowing and
    /// page-faulting tens of megabytes per chunk).
    input: Input,
}

/// What is shared by every chunk of a stage.
struct Work {
    transform: Transform,
    table: String,
    counters: HashMap<Setting, (metrics::Counter, metrics::Counter)>,
    /// The time partitions of top-level columns that do not hold every value: a computed
    /// value beyond one is a dead letter `out_of_range`, as a decoded one is.
    ranges: Vec<PartitionRange>,
}

/// The sources of the rows of one chunk.
struct Input {
    meta: MetaRows,
    sources: Vec<Source>,
    bytes: Vec<u8>,
    topics: Vec<String>,
    /// The headers of the rows that have any, by row.
    headers: HashMap<usize, Headers>,
}

type Headers = Vec<(String, Option<Vec<u8>>)>;

impl Input {
    fn clear(&mut self) {
        self.sources.clear();
        self.bytes.clear();
        self.meta.clear();
        self.headers.clear();
    }
}

impl Stage {
    /// The stage of `table` for `mapping` (the table's with the pipeline's laid over it) on
    /// `schema`; `None` when the mapping has no computed columns or rules.
    pub fn new(
        table: &str,
        schema: &iceberg::spec::Schema,
        mapping: &Mapping,
    ) -> Result<Option<Self>, MappingError> {
        let Some(transform) = Transform::new(schema, mapping)? else {
            return Ok(None);
        };
        let mut counters = HashMap::new();
        for s in transform.settings() {
            let labels = |outcome: &'static str| {
                [
                    ("table", table.to_string()),
                    ("transform", s.label()),
                    ("outcome", outcome.to_string()),
                ]
            };
            counters.insert(
                s.clone(),
                (
                    metrics::counter!(m::TRANSFORM_ROWS, &labels("applied")),
                    metrics::counter!(m::TRANSFORM_ROWS, &labels("rejected")),
                ),
            );
        }
        let work = Work {
            transform,
            table: table.to_string(),
            counters,
            ranges: Vec::new(),
        };
        Ok(Some(Self {
            input: work.input(),
            work,
        }))
    }

    /// Checks computed values against these partition ranges (the table's current spec).
    pub fn with_ranges(mut self, ranges: &[PartitionRange]) -> Self {
        self.work.ranges = ranges
            .iter()
            .filter(|r| r.path.len() == 1)
            .cloned()
            .collect();
        self
    }

    /// Whether the expressions read `_kafka_headers` (then pass the headers to `push`).
    pub fn needs_headers(&self) -> bool {
        self.input.meta.needs_headers()
    }

    /// Keeps the source of a row the decoder just kept.
    pub fn push(
        &mut self,
        meta: &RecordMeta<'_>,
        payload: &[u8],
        headers: Headers,
        to_raw: bool,
        to_dlq: bool,
        to_aggs: bool,
    ) {
        let input = &mut self.input;
        if input.meta.is_needed() {
            input.meta.push(
                meta,
                headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            );
        }
        let topic = match input.topics.iter().position(|t| t == meta.topic) {
            Some(i) => i,
            None => {
                input.topics.push(meta.topic.to_string());
                input.topics.len() - 1
            }
        };
        let mut flags = 0;
        for (set, flag) in [
            (to_raw, TO_RAW),
            (to_dlq, TO_DLQ),
            (to_aggs, TO_AGGS),
            (meta.partition.is_some(), HAS_PARTITION),
            (meta.offset.is_some(), HAS_OFFSET),
            (meta.timestamp_ms.is_some(), HAS_TIMESTAMP),
            (meta.key.is_some(), HAS_KEY),
        ] {
            if set {
                flags |= flag;
            }
        }
        if !headers.is_empty() {
            input.headers.insert(input.sources.len(), headers);
        }
        let at = input.bytes.len();
        let key = meta.key.unwrap_or_default();
        input.bytes.extend_from_slice(key);
        input.bytes.extend_from_slice(payload);
        // A Kafka message is far below 4 GiB (the broker's limit is a few MB by default).
        let len = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX);
        input.sources.push(Source {
            offset: meta.offset.unwrap_or_default(),
            timestamp_ms: meta.timestamp_ms.unwrap_or_default(),
            at,
            key_len: len(key),
            payload_len: len(payload),
            partition: meta.partition.unwrap_or_default(),
            topic: u16::try_from(topic).unwrap_or(u16::MAX),
            flags,
        });
    }

    /// Applies the transform to `rows` (the decoder's output for the rows pushed since the
    /// last chunk) and turns rejected rows into dead letters failed at `failed_at_us`.
    pub fn apply(&mut self, rows: RecordBatch, failed_at_us: i64) -> Result<Staged, String> {
        let result = self.work.apply(rows, &mut self.input, failed_at_us);
        self.input.clear();
        result
    }

    /// Forgets the rows pushed since the last chunk (the batch was dropped).
    pub fn clear(&mut self) {
        self.input.clear();
    }
}

impl Work {
    /// Moves the rows whose (computed) time is beyond a partition's range from `applied.rows`
    /// to its rejections.
    fn out_of_range(&self, mut applied: Applied) -> Result<Applied, String> {
        let mut bad: BTreeMap<usize, Rejection> = BTreeMap::new();
        for range in &self.ranges {
            let Some(col) = applied.rows.column_by_name(&range.path[0]) else {
                continue;
            };
            let values = match datafusion::arrow::compute::cast(col, &DataType::Int64) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let values = values.as_primitive::<Int64Type>();
            for (i, v) in values.iter().enumerate() {
                if let Some(v) = v
                    && !range.holds(v)
                {
                    bad.entry(i).or_insert_with(|| Rejection {
                        row: i,
                        kind: "out_of_range",
                        field: range.path[0].clone(),
                        message: format!("field \"{}\": {}", range.path[0], range.beyond(v)),
                    });
                }
            }
        }
        if bad.is_empty() {
            return Ok(applied);
        }
        let out_rows = applied.rows.num_rows();
        let keep: BooleanArray = (0..out_rows).map(|i| Some(!bad.contains_key(&i))).collect();
        applied.rows = arrow_select::filter::filter_record_batch(&applied.rows, &keep)
            .map_err(|e| format!("transform of {}: {e}", self.table))?;
        // Output rows are the kept input rows, in order (all of them when `kept` is unset).
        let mut kept: Vec<bool> = match &applied.kept {
            None => vec![true; out_rows],
            Some(k) => (0..k.len()).map(|i| k.value(i)).collect(),
        };
        let kept_inputs: Vec<usize> = (0..kept.len()).filter(|&i| kept[i]).collect();
        for (out, mut why) in bad {
            why.row = kept_inputs[out];
            kept[why.row] = false;
            applied.rejected.push(why);
        }
        applied.rejected.sort_by_key(|r| r.row);
        applied.kept = Some(kept.into_iter().map(Some).collect());
        Ok(applied)
    }

    fn input(&self) -> Input {
        Input {
            meta: self.transform.meta_rows(),
            sources: Vec::new(),
            bytes: Vec::new(),
            topics: Vec::new(),
            headers: HashMap::new(),
        }
    }

    fn apply(
        &self,
        rows: RecordBatch,
        input: &mut Input,
        failed_at_us: i64,
    ) -> Result<Staged, String> {
        let (sources, bytes) = (&input.sources, &input.bytes);
        if sources.len() != rows.num_rows() {
            return Err(format!(
                "transform of {}: {} sources for {} decoded rows",
                self.table,
                sources.len(),
                rows.num_rows()
            ));
        }
        let applied = self.out_of_range(self.transform.apply(rows, &mut input.meta)?)?;
        for (s, ok, bad) in &applied.counts {
            if let Some((applied_c, rejected_c)) = self.counters.get(s) {
                applied_c.increment(*ok);
                rejected_c.increment(*bad);
            }
        }
        let rejected = applied
            .rejected
            .into_iter()
            .map(|why| {
                let src = sources[why.row];
                let dead_letter = DeadLetter {
                    source_topic: input.topics[usize::from(src.topic)].clone(),
                    source_partition: src.partition(),
                    source_offset: src.offset(),
                    source_load: None,
                    source_key: src.key(bytes).map(<[u8]>::to_vec),
                    source_timestamp_ms: src.timestamp_ms(),
                    payload: Some(src.payload(bytes).to_vec()),
                    target_table: self.table.clone(),
                    error_kind: why.kind.to_string(),
                    error_field: Some(why.field.clone()),
                    error_message: why.message.clone(),
                    failed_at_us,
                    headers: input.headers.remove(&why.row).unwrap_or_default(),
                };
                Rejected {
                    source: src,
                    why,
                    dead_letter,
                }
            })
            .collect();
        let needed = sources.iter().map(|s| (s.to_raw(), s.to_aggs())).collect();
        Ok(Staged {
            rows: applied.rows,
            kept: applied.kept,
            needed,
            rejected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_schema::TableDefinition;

    /// A rejected row's dead letter carries its own source exactly (key, payload, headers,
    /// coordinates, missing ones as missing), whatever the rows around it had; the rows that
    /// pass keep their routing flags.
    #[test]
    fn dead_letters_carry_each_rows_own_source() {
        let def = TableDefinition::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../schemas/lake.events.json"),
        )
        .unwrap();
        let mapping = floe_devtools::mappings::benchmark_mapping();
        let opts = DecoderOptions::for_pipeline(&def.properties, &mapping);
        let mut decoder = Decoder::new(&def.schema, &opts).unwrap();
        let mut stage = Stage::new("lake.events", &def.schema, &opts.mapping)
            .unwrap()
            .unwrap();
        let event = |guid: &str, value: f64| {
            format!(
                r#"{{"eventGuid":"{guid}","timestamp":1742199657865,"country":"country_1","is_returning":true,"user_id":"u","action":"a","device_type":"d","page":"p","category":"c","value":{value},"session_duration":3}}"#
            )
        };
        // (payload, partition, offset, timestamp, key, headers)
        type Row = (
            String,
            Option<i32>,
            Option<i64>,
            Option<i64>,
            Option<&'static [u8]>,
            Headers,
        );
        let rows: Vec<Row> = vec![
            (
                event("a", 1.0),
                Some(3),
                Some(10),
                Some(5),
                Some(b"ka"),
                vec![],
            ),
            (
                event("b", -1.0),
                Some(3),
                Some(11),
                None,
                None,
                vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)],
            ),
            (
                event("c", 2.0),
                Some(4),
                Some(7),
                Some(6),
                None,
                vec![("x".into(), None)],
            ),
            (event("d", -2.0), None, Some(12), Some(8), Some(b""), vec![]),
        ];
        for (i, (payload, partition, offset, timestamp_ms, key, headers)) in rows.iter().enumerate()
        {
            let meta = RecordMeta {
                topic: if i == 2 { "other" } else { "events" },
                partition: *partition,
                offset: *offset,
                timestamp_ms: *timestamp_ms,
                key: *key,
                ingested_at_us: 1,
            };
            decoder.decode(payload.as_bytes(), &meta).unwrap();
            stage.push(
                &meta,
                payload.as_bytes(),
                headers.clone(),
                i != 1,
                true,
                i == 0,
            );
        }
        let staged = stage.apply(decoder.finish(), 99).unwrap();
        assert_eq!(staged.rows.num_rows(), 2);
        assert_eq!(
            staged.needed,
            vec![(true, true), (false, false), (true, false), (true, false)]
        );
        let dead: Vec<&DeadLetter> = staged.rejected.iter().map(|r| &r.dead_letter).collect();
        assert_eq!(dead.len(), 2);
        for (d, row) in dead.iter().zip([&rows[1], &rows[3]]) {
            assert_eq!(d.payload.as_deref(), Some(row.0.as_bytes()));
            assert_eq!(d.source_partition, row.1);
            assert_eq!(d.source_offset, row.2);
            assert_eq!(d.source_timestamp_ms, row.3);
            assert_eq!(d.source_key.as_deref(), row.4);
            assert_eq!(d.headers, row.5);
            assert_eq!(d.source_topic, "events");
            assert_eq!(d.failed_at_us, 99);
            assert!(
                d.error_message.contains("non_negative_value"),
                "{}",
                d.error_message
            );
        }
        assert!(staged.rejected.iter().all(|r| r.source.to_dlq()));
        assert!(!staged.rejected[0].source.to_raw() && staged.rejected[1].source.to_raw());
    }

    /// A computed time beyond the hour partition's range is a dead letter `out_of_range`
    /// like a decoded one; the rows around it load.
    #[test]
    fn a_computed_time_beyond_the_partition_is_out_of_range() {
        let def = TableDefinition::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../schemas/lake.events.json"),
        )
        .unwrap();
        let spec = def.partition_spec.clone().bind(def.schema.clone()).unwrap();
        let ranges = PartitionRange::for_spec(&spec, &def.schema);
        assert!(!ranges.is_empty());
        let mapping = Mapping {
            computed: [(
                "event_ts".to_string(),
                "arrow_cast(CASE WHEN value > 0 THEN 9000000000000000000 \
                 ELSE 1742199657865000 END, 'Timestamp(Microsecond, Some(\"+00:00\"))')"
                    .to_string(),
            )]
            .into(),
            ..Default::default()
        };
        let opts = DecoderOptions::for_pipeline(&def.properties, &mapping);
        let mut decoder = Decoder::new(&def.schema, &opts).unwrap();
        let mut stage = Stage::new("lake.events", &def.schema, &opts.mapping)
            .unwrap()
            .unwrap()
            .with_ranges(&ranges);
        for (i, value) in [-1.0, 1.0, -2.0, 3.0, -4.0].iter().enumerate() {
            let payload =
                format!(r#"{{"eventGuid":"g{i}","timestamp":1742199657865,"value":{value}}}"#);
            let meta = RecordMeta {
                topic: "events",
                offset: Some(i as i64),
                ..Default::default()
            };
            decoder.decode(payload.as_bytes(), &meta).unwrap();
            stage.push(&meta, payload.as_bytes(), Vec::new(), true, true, false);
        }
        let staged = stage.apply(decoder.finish(), 1).unwrap();
        let guids: Vec<&str> = staged
            .rows
            .column_by_name("event_guid")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(guids, ["g0", "g2", "g4"]);
        let kept = staged.kept.unwrap();
        assert_eq!(
            (0..5).map(|i| kept.value(i)).collect::<Vec<_>>(),
            [true, false, true, false, true]
        );
        let dead: Vec<(Option<i64>, &str, &str)> = staged
            .rejected
            .iter()
            .map(|r| {
                let d = &r.dead_letter;
                (
                    d.source_offset,
                    d.error_kind.as_str(),
                    d.error_message.as_str(),
                )
            })
            .collect();
        assert_eq!(dead.len(), 2, "{dead:?}");
        for ((offset, kind, message), want) in dead.iter().zip([1, 3]) {
            assert_eq!((*offset, *kind), (Some(want), "out_of_range"), "{message}");
            assert!(
                message.contains("beyond the range of the hour partition"),
                "{message}"
            );
        }
    }
}
