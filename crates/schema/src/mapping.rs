//! How a message becomes a row beyond key matching: an envelope to unnest, columns projected
//! from JSON pointers, computed columns and rules.
//!
//! One model for both places a mapping is set:
//! - a pipeline (`[[pipelines]]` keys `unnest`, `columns.<column>`, `computed.<column>`,
//!   `rules.<name>`);
//! - the table itself, as properties (`floe.unnest`, `floe.column.<column>`,
//!   `floe.computed.<column>`, `floe.rule.<name>`), which every writer of the table honours
//!   (`floe run`, `floe load`, `floe dlq replay`).
//!
//! A pipeline's entries override the table's entry of the same name. The decoder applies
//! `unnest` and `columns`; computed columns and rules are SQL expressions evaluated over the
//! decoded batch by `floe-transform`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Table property: JSON pointer of the object decoded as the row.
pub const UNNEST_PROPERTY: &str = "floe.unnest";
/// Table property prefix: `floe.column.<column> = <JSON pointer>`.
pub const COLUMN_PROPERTY_PREFIX: &str = "floe.column.";
/// Table property prefix: `floe.computed.<column> = <SQL expression>`.
pub const COMPUTED_PROPERTY_PREFIX: &str = "floe.computed.";
/// Table property prefix: `floe.rule.<name> = <SQL boolean expression>`.
pub const RULE_PROPERTY_PREFIX: &str = "floe.rule.";

/// Envelope, projections, computed columns and rules of a pipeline or a table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mapping {
    /// JSON pointer (RFC 6901, e.g. `/data`) of the object decoded as the row; a message
    /// without an object there is a dead letter. Pointers in `columns` stay relative to the
    /// whole message, so envelope fields (`/id`, `/time`) can fill columns too. An empty
    /// string turns off a table's envelope for a pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unnest: Option<String>,
    /// Column → JSON pointer into the message (`/user/address/city`, `/items/0/sku`); the
    /// column is filled from there instead of by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// Column → SQL expression over the decoded row and the Kafka metadata (`lower(country)`,
    /// `_kafka_timestamp`); replaces the decoded value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub computed: BTreeMap<String, String>,
    /// Rule name → SQL boolean expression; a row for which it is not true (false or NULL) is a
    /// dead letter of kind `rule` naming the rule.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, String>,
}

/// One entry of a mapping, for messages and listings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Setting {
    /// `unnest`.
    Unnest,
    /// `columns.<column>`.
    Column(String),
    /// `computed.<column>`.
    Computed(String),
    /// `rules.<name>`.
    Rule(String),
}

impl Setting {
    /// The key in a pipeline's config: `columns.city`.
    pub fn config_key(&self) -> String {
        match self {
            Self::Unnest => "unnest".into(),
            Self::Column(c) => format!("columns.{c}"),
            Self::Computed(c) => format!("computed.{c}"),
            Self::Rule(r) => format!("rules.{r}"),
        }
    }

    /// The table property: `floe.column.city`.
    pub fn property_key(&self) -> String {
        match self {
            Self::Unnest => UNNEST_PROPERTY.into(),
            Self::Column(c) => format!("{COLUMN_PROPERTY_PREFIX}{c}"),
            Self::Computed(c) => format!("{COMPUTED_PROPERTY_PREFIX}{c}"),
            Self::Rule(r) => format!("{RULE_PROPERTY_PREFIX}{r}"),
        }
    }

    /// The metric label of the transform: `unnest`, `columns.city`, `computed.country`.
    pub fn label(&self) -> String {
        self.config_key()
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.config_key())
    }
}

/// A mapping entry that cannot work, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    /// The entry.
    pub setting: Setting,
    /// What is wrong and what to do.
    pub message: String,
}

impl MappingError {
    /// The error for a config section: `pipelines[0].columns.city: …` for `pipelines[0]`.
    pub fn under(&self, section: &str) -> String {
        format!("{section}.{}: {}", self.setting.config_key(), self.message)
    }

    /// The error for a table's properties: `table lake.events, property floe.column.city: …`.
    pub fn in_table(&self, table: &str) -> String {
        format!(
            "table {table}, property {}: {}",
            self.setting.property_key(),
            self.message
        )
    }
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for MappingError {}

impl Mapping {
    /// The mapping a table's properties set.
    pub fn from_table_properties(props: &HashMap<String, String>) -> Self {
        let mut m = Self::default();
        for (k, v) in props {
            if k == UNNEST_PROPERTY {
                m.unnest = Some(v.clone());
            } else if let Some(c) = k.strip_prefix(COLUMN_PROPERTY_PREFIX) {
                m.columns.insert(c.to_string(), v.clone());
            } else if let Some(c) = k.strip_prefix(COMPUTED_PROPERTY_PREFIX) {
                m.computed.insert(c.to_string(), v.clone());
            } else if let Some(r) = k.strip_prefix(RULE_PROPERTY_PREFIX) {
                m.rules.insert(r.to_string(), v.clone());
            }
        }
        m
    }

    /// `self` (a table's mapping) with `top` (a pipeline's) laid over it: `top`'s entries
    /// replace those of the same name.
    pub fn overlay(&self, top: &Mapping) -> Mapping {
        let mut m = self.clone();
        if top.unnest.is_some() {
            m.unnest = top.unnest.clone();
        }
        m.columns
            .extend(top.columns.iter().map(|(k, v)| (k.clone(), v.clone())));
        m.computed
            .extend(top.computed.iter().map(|(k, v)| (k.clone(), v.clone())));
        m.rules
            .extend(top.rules.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.envelope().is_none()
            && self.columns.is_empty()
            && self.computed.is_empty()
            && self.rules.is_empty()
    }

    /// The envelope pointer, if one (an empty `unnest` is none).
    pub fn envelope(&self) -> Option<&str> {
        self.unnest.as_deref().filter(|p| !p.is_empty())
    }

    /// The Arrow schema the decoder produces for a table whose Arrow schema is `table`: the
    /// same, with computed columns nullable (they may be absent from the JSON; they are filled
    /// after decoding).
    pub fn decoded_schema(&self, table: &arrow_schema::Schema) -> arrow_schema::Schema {
        if self.computed.is_empty() {
            return table.clone();
        }
        let fields: Vec<arrow_schema::FieldRef> = table
            .fields()
            .iter()
            .map(|f| {
                if self.computed.contains_key(f.name()) && !f.is_nullable() {
                    std::sync::Arc::new(f.as_ref().clone().with_nullable(true))
                } else {
                    f.clone()
                }
            })
            .collect();
        arrow_schema::Schema::new_with_metadata(fields, table.metadata().clone())
    }

    /// Every entry with its value, in a stable order (envelope, projections, computed, rules).
    pub fn entries(&self) -> Vec<(Setting, &str)> {
        let mut out = Vec::new();
        if let Some(u) = &self.unnest {
            out.push((Setting::Unnest, u.as_str()));
        }
        out.extend(
            self.columns
                .iter()
                .map(|(k, v)| (Setting::Column(k.clone()), v.as_str())),
        );
        out.extend(
            self.computed
                .iter()
                .map(|(k, v)| (Setting::Computed(k.clone()), v.as_str())),
        );
        out.extend(
            self.rules
                .iter()
                .map(|(k, v)| (Setting::Rule(k.clone()), v.as_str())),
        );
        out
    }

    /// Checks what the decoder relies on against `schema` (the table's current schema):
    /// pointers parse, projected and computed columns are top-level columns, rule names and
    /// expressions are not empty. (Expressions are checked by `floe-transform`.)
    pub fn check_decoding(&self, schema: &iceberg::spec::Schema) -> Result<(), MappingError> {
        let fail = |setting: Setting, message: String| Err(MappingError { setting, message });
        if let Some(p) = self.envelope()
            && let Err(e) = Pointer::parse(p)
        {
            return fail(Setting::Unnest, e);
        }
        let column = |name: &str| schema.as_struct().fields().iter().any(|f| f.name == name);
        let names = || {
            schema
                .as_struct()
                .fields()
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (c, p) in &self.columns {
            if !column(c) {
                return fail(
                    Setting::Column(c.clone()),
                    format!("the table has no column {c} (columns: {})", names()),
                );
            }
            let pointer = Pointer::parse(p).map_err(|e| MappingError {
                setting: Setting::Column(c.clone()),
                message: e,
            })?;
            if pointer.segments().is_empty() {
                return fail(
                    Setting::Column(c.clone()),
                    "the pointer \"\" is the whole message; name a field, e.g. \"/data/id\"".into(),
                );
            }
        }
        for (c, e) in &self.computed {
            if !column(c) {
                return fail(
                    Setting::Computed(c.clone()),
                    format!(
                        "the table has no column {c}; add it first (floe table evolve --add-column {c}:TYPE) (columns: {})",
                        names()
                    ),
                );
            }
            if e.trim().is_empty() {
                return fail(
                    Setting::Computed(c.clone()),
                    "the expression is empty".into(),
                );
            }
        }
        for (r, e) in &self.rules {
            if r.is_empty() {
                return fail(Setting::Rule(r.clone()), "a rule needs a name".into());
            }
            if e.trim().is_empty() {
                return fail(Setting::Rule(r.clone()), "the expression is empty".into());
            }
        }
        Ok(())
    }
}

/// A parsed JSON pointer (RFC 6901): `/a/b~1c/0` → `["a", "b/c", "0"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    segments: Vec<String>,
}

impl Pointer {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self {
                text: String::new(),
                segments: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} is not a JSON pointer: it must start with \"/\" (e.g. \"/{text}\")"
            ));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            let mut seg = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => seg.push('~'),
                        Some('1') => seg.push('/'),
                        _ => {
                            return Err(format!(
                                "{text:?} is not a JSON pointer: \"~\" must be followed by 0 (for ~) or 1 (for /)"
                            ));
                        }
                    }
                } else {
                    seg.push(c);
                }
            }
            segments.push(seg);
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// The reference tokens, unescaped.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A token as an array index, if it is one (`0`, `12`; not `01` or `-`).
    pub fn index(segment: &str) -> Option<usize> {
        if segment.is_empty()
            || !segment.bytes().all(|b| b.is_ascii_digit())
            || (segment.len() > 1 && segment.starts_with('0'))
        {
            return None;
        }
        segment.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_follow_rfc_6901() {
        assert!(Pointer::parse("").unwrap().segments().is_empty());
        assert_eq!(Pointer::parse("/data").unwrap().segments(), ["data"]);
        assert_eq!(
            Pointer::parse("/a~1b/m~0n/0/").unwrap().segments(),
            ["a/b", "m~n", "0", ""]
        );
        assert!(Pointer::parse("data").unwrap_err().contains("start with"));
        assert!(Pointer::parse("/a~2").unwrap_err().contains("~"));
        assert_eq!(Pointer::index("0"), Some(0));
        assert_eq!(Pointer::index("12"), Some(12));
        assert_eq!(Pointer::index("012"), None);
        assert_eq!(Pointer::index("-"), None);
    }

    #[test]
    fn table_properties_and_pipeline_overlay() {
        let props: HashMap<String, String> = [
            ("floe.unnest", "/data"),
            ("floe.column.city", "/data/address/city"),
            ("floe.computed.country", "upper(country)"),
            ("floe.rule.positive", "value >= 0"),
            ("write.format.default", "parquet"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let table = Mapping::from_table_properties(&props);
        assert_eq!(table.envelope(), Some("/data"));
        assert_eq!(table.columns["city"], "/data/address/city");
        let pipeline = Mapping {
            unnest: Some(String::new()),
            rules: [("positive".to_string(), "value > 0".to_string())].into(),
            ..Default::default()
        };
        let m = table.overlay(&pipeline);
        assert_eq!(m.envelope(), None, "an empty unnest turns the envelope off");
        assert_eq!(m.rules["positive"], "value > 0");
        assert_eq!(m.computed["country"], "upper(country)");
        let keys: Vec<String> = m.entries().iter().map(|(s, _)| s.property_key()).collect();
        assert_eq!(
            keys,
            [
                "floe.unnest",
                "floe.column.city",
                "floe.computed.country",
                "floe.rule.positive"
            ]
        );
    }
}
