//! Seed e-commerce events, as the MinIO seed's generator makes them (`eventGuid` as the key,
//! `timestamp` epoch millis, `country_N`, `user_id_N`, …), with optional malformed messages of
//! several kinds and duplicates (the same message sent again, as a retrying producer does).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Per-column cardinalities (values are `<column>_<0..n>`).
pub const CARDINALITIES: [(&str, u32); 6] = [
    ("country", 50),
    ("user_id", 1000),
    ("action", 10),
    ("device_type", 3),
    ("page", 20),
    ("category", 30),
];

/// Generator settings.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    /// Fraction of messages that are malformed (0..1).
    pub malformed: f64,
    /// Fraction of messages that repeat an earlier event (0..1).
    pub duplicates: f64,
    /// Random seed (same seed, same stream).
    pub seed: u64,
    /// Event time of the first event (epoch millis).
    pub start_ms: i64,
    /// Event-time step between events (millis).
    pub step_ms: i64,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self {
            malformed: 0.0,
            duplicates: 0.0,
            seed: 42,
            start_ms: chrono::Utc::now().timestamp_millis() - 6 * 3_600_000,
            step_ms: 50,
        }
    }
}

/// What a generated message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// A valid event.
    Valid,
    /// A valid event repeating an earlier one's id and content.
    Duplicate,
    /// Not JSON.
    NotJson,
    /// JSON cut short.
    Truncated,
    /// `value` is a string.
    WrongType,
    /// `timestamp` is not a timestamp.
    BadTimestamp,
    /// `eventGuid` missing.
    MissingId,
    /// A JSON array instead of an object.
    NotAnObject,
    /// `session_duration` beyond int range.
    OutOfRange,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
}

impl MessageKind {
    /// Whether floe must reject it.
    pub fn is_malformed(self) -> bool {
        !matches!(self, MessageKind::Valid | MessageKind::Duplicate)
    }

    /// Lower-case label.
    pub fn label(self) -> &'static str {
        match self {
            MessageKind::Valid => "valid",
            MessageKind::Duplicate => "duplicate",
            MessageKind::NotJson => "not_json",
            MessageKind::Truncated => "truncated",
            MessageKind::WrongType => "wrong_type",
            MessageKind::BadTimestamp => "bad_timestamp",
            MessageKind::MissingId => "missing_id",
            MessageKind::NotAnObject => "not_an_object",
            MessageKind::OutOfRange => "out_of_range",
            MessageKind::InvalidUtf8 => "invalid_utf8",
        }
    }
}

const MALFORMED: [MessageKind; 8] = [
    MessageKind::NotJson,
    MessageKind::Truncated,
    MessageKind::WrongType,
    MessageKind::BadTimestamp,
    MessageKind::MissingId,
    MessageKind::NotAnObject,
    MessageKind::OutOfRange,
    MessageKind::InvalidUtf8,
];

/// One message: key (the event id) and value.
#[derive(Debug, Clone)]
pub struct Message {
    /// Kafka key: the eventGuid.
    pub key: String,
    /// Kafka value.
    pub payload: Vec<u8>,
    /// What it is.
    pub kind: MessageKind,
}

/// An endless, deterministic stream of seed messages.
pub struct Generator {
    opts: GeneratorOptions,
    rng: StdRng,
    n: i64,
    recent: Vec<(String, Vec<u8>)>,
}

impl Generator {
    /// A generator with `opts`.
    pub fn new(opts: GeneratorOptions) -> Self {
        Self {
            rng: StdRng::seed_from_u64(opts.seed),
            opts,
            n: 0,
            recent: Vec::with_capacity(1024),
        }
    }

    fn event(&mut self) -> (String, Vec<u8>) {
        let r = &mut self.rng;
        let guid = uuid::Builder::from_random_bytes(r.random())
            .into_uuid()
            .to_string();
        let ts = self.opts.start_ms + self.n * self.opts.step_ms + r.random_range(0..1000);
        let c = |r: &mut StdRng, i: usize| r.random_range(0..CARDINALITIES[i].1);
        let json = format!(
            concat!(
                r#"{{"eventGuid":"{}","timestamp":{},"country":"country_{}","is_returning":{},"#,
                r#""user_id":"user_id_{}","action":"action_{}","device_type":"device_type_{}","#,
                r#""page":"page_{}","category":"category_{}","value":{},"session_duration":{}}}"#
            ),
            guid,
            ts,
            c(r, 0),
            r.random_bool(0.4),
            c(r, 1),
            c(r, 2),
            c(r, 3),
            c(r, 4),
            c(r, 5),
            r.random_range(0.0..100.0f64),
            r.random_range(0..600),
        );
        (guid, json.into_bytes())
    }

    /// The next message.
    pub fn next_message(&mut self) -> Message {
        self.n += 1;
        let roll: f64 = self.rng.random();
        if roll < self.opts.malformed {
            let kind = MALFORMED[self.rng.random_range(0..MALFORMED.len())];
            let (key, good) = self.event();
            let text = String::from_utf8(good).expect("generated JSON is UTF-8");
            let payload = match kind {
                MessageKind::NotJson => b"this is not json".to_vec(),
                MessageKind::Truncated => text.as_bytes()[..text.len() / 2].to_vec(),
                MessageKind::WrongType => replace_field(&text, "value", "\"abc\"").into_bytes(),
                MessageKind::BadTimestamp => {
                    replace_field(&text, "timestamp", "\"yesterday\"").into_bytes()
                }
                MessageKind::MissingId => {
                    let start = text.find(",\"timestamp\"").expect("timestamp field");
                    format!("{{{}", &text[start + 1..]).into_bytes()
                }
                MessageKind::NotAnObject => format!("[{text}]").into_bytes(),
                MessageKind::OutOfRange => {
                    replace_field(&text, "session_duration", "99999999999").into_bytes()
                }
                MessageKind::InvalidUtf8 => {
                    let mut b = text.into_bytes();
                    let at = b.iter().position(|&c| c == b'_').unwrap_or(1);
                    b[at] = 0xff;
                    b
                }
                MessageKind::Valid | MessageKind::Duplicate => unreachable!(),
            };
            return Message { key, payload, kind };
        }
        if roll < self.opts.malformed + self.opts.duplicates && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let (key, payload) = self.recent[i].clone();
            return Message {
                key,
                payload,
                kind: MessageKind::Duplicate,
            };
        }
        let (key, payload) = self.event();
        if self.opts.duplicates > 0.0 {
            if self.recent.len() < 1024 {
                self.recent.push((key.clone(), payload.clone()));
            } else {
                let i = self.rng.random_range(0..self.recent.len());
                self.recent[i] = (key.clone(), payload.clone());
            }
        }
        Message {
            key,
            payload,
            kind: MessageKind::Valid,
        }
    }
}

fn replace_field(json: &str, field: &str, value: &str) -> String {
    let key = format!("\"{field}\":");
    let start = json.find(&key).expect("field present") + key.len();
    let end = json[start..]
        .find([',', '}'])
        .map(|e| start + e)
        .expect("field ends");
    format!("{}{}{}", &json[..start], value, &json[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_ratios_hold() {
        let opts = GeneratorOptions {
            malformed: 0.1,
            duplicates: 0.05,
            seed: 9,
            start_ms: 0,
            step_ms: 1,
        };
        let a: Vec<_> = (0..100)
            .map({
                let mut g = Generator::new(opts.clone());
                move |_| g.next_message().payload
            })
            .collect();
        let mut g = Generator::new(opts);
        let b: Vec<_> = (0..100).map(|_| g.next_message().payload).collect();
        assert_eq!(a, b);
        let mut g = Generator::new(GeneratorOptions {
            seed: 1,
            ..GeneratorOptions {
                malformed: 0.1,
                duplicates: 0.05,
                ..Default::default()
            }
        });
        let kinds: Vec<_> = (0..20_000).map(|_| g.next_message().kind).collect();
        let bad = kinds.iter().filter(|k| k.is_malformed()).count() as f64 / 20_000.0;
        let dup = kinds
            .iter()
            .filter(|k| **k == MessageKind::Duplicate)
            .count() as f64
            / 20_000.0;
        assert!((0.08..0.12).contains(&bad), "{bad}");
        assert!((0.03..0.07).contains(&dup), "{dup}");
    }

    #[test]
    fn every_malformed_kind_is_rejected_and_valid_ones_accepted() {
        let def = floe_schema::TableDefinition::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../schemas/lake.events.json"),
        )
        .unwrap();
        let mut dec = floe_schema::Decoder::new(
            &def.schema,
            &floe_schema::DecoderOptions::from_table_properties(&def.properties),
        )
        .unwrap();
        let mut g = Generator::new(GeneratorOptions {
            malformed: 0.5,
            duplicates: 0.1,
            ..Default::default()
        });
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let m = g.next_message();
            let ok = dec
                .decode(&m.payload, &floe_schema::RecordMeta::default())
                .is_ok();
            assert_eq!(
                ok,
                !m.kind.is_malformed(),
                "{:?}: {}",
                m.kind,
                String::from_utf8_lossy(&m.payload)
            );
            seen.insert(m.kind);
        }
        assert_eq!(seen.len(), MALFORMED.len() + 2);
    }
}
