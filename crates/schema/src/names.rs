//! How JSON keys find their columns.
//!
//! For each key, in order: the exact column name, then the snake_case form of the key
//! (`eventGuid` → `event_guid`), then a case-insensitive match, then the table's aliases
//! (`floe.alias.<json key> = <column>` table properties). Keys that match nothing are unknown
//! fields: ignored and counted.

use std::collections::HashMap;

/// Table-property prefix declaring a JSON key alias: `floe.alias.timestamp = event_ts`.
pub const ALIAS_PROPERTY_PREFIX: &str = "floe.alias.";

/// Reads `floe.alias.*` properties into a map JSON key → column name.
pub fn aliases_from_properties(props: &HashMap<String, String>) -> HashMap<String, String> {
    props
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(ALIAS_PROPERTY_PREFIX)
                .filter(|key| !key.is_empty())
                .map(|key| (key.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The snake_case form of a key: `eventGuid` → `event_guid`, `HTTPStatus` → `http_status`,
/// `device-type` → `device_type`.
pub fn snake_case(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::with_capacity(key.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '-' || c == ' ' || c == '.' {
            if !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Maximum distinct keys remembered per struct level; past it keys are resolved uncached so
/// hostile data with random keys cannot grow memory without bound.
const KEY_CACHE_LIMIT: usize = 4096;

/// Resolves JSON keys to field positions of one struct level, with caches for the hot path.
#[derive(Debug, Clone)]
pub struct KeyResolver {
    exact: HashMap<String, usize>,
    lower: HashMap<String, usize>,
    aliases: HashMap<String, usize>,
    cache: HashMap<Box<[u8]>, Option<usize>>,
    /// The key last seen at each position of an object: events usually repeat one key order,
    /// so a byte comparison settles most lookups without hashing.
    by_position: Vec<(Box<[u8]>, Option<usize>)>,
}

impl KeyResolver {
    /// `names` are the resolvable field names in order (index = field position; `None` for
    /// fields not fed from JSON); `aliases` maps JSON keys to field names.
    pub fn new(names: &[Option<&str>], aliases: &HashMap<String, String>) -> Self {
        let mut exact = HashMap::new();
        let mut lower = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(name) = name {
                exact.insert(name.to_string(), i);
                lower.entry(name.to_lowercase()).or_insert(i);
            }
        }
        let aliases = aliases
            .iter()
            .filter_map(|(key, col)| exact.get(col.as_str()).map(|&i| (key.clone(), i)))
            .collect();
        Self {
            exact,
            lower,
            aliases,
            cache: HashMap::new(),
            by_position: Vec::new(),
        }
    }

    /// Resolves `key` (unescaped) seen at member position `pos` of its object.
    #[inline]
    pub fn resolve(&mut self, key: &str, pos: usize) -> Option<usize> {
        if let Some((k, r)) = self.by_position.get(pos)
            && **k == *key.as_bytes()
        {
            return *r;
        }
        let r = match self.cache.get(key.as_bytes()) {
            Some(r) => *r,
            None => {
                let r = self.resolve_uncached(key);
                if self.cache.len() < KEY_CACHE_LIMIT {
                    self.cache.insert(key.as_bytes().into(), r);
                }
                r
            }
        };
        if pos < 256 {
            if pos < self.by_position.len() {
                self.by_position[pos] = (key.as_bytes().into(), r);
            } else if pos == self.by_position.len() {
                self.by_position.push((key.as_bytes().into(), r));
            }
        }
        r
    }

    fn resolve_uncached(&self, key: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(key) {
            return Some(i);
        }
        if let Some(&i) = self.exact.get(snake_case(key).as_str()) {
            return Some(i);
        }
        if let Some(&i) = self.lower.get(&key.to_lowercase()) {
            return Some(i);
        }
        // Aliases match like column names do: exactly, by snake_case form, ignoring case (so
        // the alias a rename keeps for `event_guid` also takes `eventGuid`).
        self.aliases
            .get(key)
            .or_else(|| self.aliases.get(snake_case(key).as_str()))
            .or_else(|| {
                let lower = key.to_lowercase();
                self.aliases
                    .iter()
                    .find(|(k, _)| k.to_lowercase() == lower)
                    .map(|(_, i)| i)
            })
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("eventGuid", "event_guid")]
    #[case("event_guid", "event_guid")]
    #[case("HTTPStatus", "http_status")]
    #[case("userID", "user_id")]
    #[case("device-type", "device_type")]
    #[case("sessionDuration2x", "session_duration2x")]
    #[case("value", "value")]
    #[case("A", "a")]
    fn snake_case_forms(#[case] key: &str, #[case] expected: &str) {
        assert_eq!(snake_case(key), expected);
    }

    #[test]
    fn resolution_order_is_exact_snake_case_insensitive_alias() {
        let names = [Some("event_guid"), Some("Country"), Some("event_ts"), None];
        let aliases = HashMap::from([
            ("timestamp".to_string(), "event_ts".to_string()),
            ("ghost".to_string(), "no_such_column".to_string()),
        ]);
        let mut r = KeyResolver::new(&names, &aliases);
        assert_eq!(r.resolve("event_guid", 0), Some(0));
        assert_eq!(r.resolve("eventGuid", 0), Some(0));
        assert_eq!(r.resolve("COUNTRY", 1), Some(1));
        assert_eq!(r.resolve("timestamp", 2), Some(2));
        assert_eq!(r.resolve("ghost", 3), None);
        // Aliases match by snake_case form and case too (a renamed column's old camelCase key).
        assert_eq!(r.resolve("TimeStamp", 5), Some(2));
        let renamed = HashMap::from([("event_guid".to_string(), "Country".to_string())]);
        let mut r2 = KeyResolver::new(&[Some("Country")], &renamed);
        assert_eq!(r2.resolve("eventGuid", 0), Some(0));
        assert_eq!(r.resolve("unknown", 4), None);
        // Positional cache must not confuse different keys at the same position.
        assert_eq!(r.resolve("Country", 0), Some(1));
        assert_eq!(r.resolve("event_guid", 0), Some(0));
    }

    #[test]
    fn aliases_come_from_properties() {
        let props = HashMap::from([
            ("floe.alias.ts".to_string(), " event_ts ".to_string()),
            ("floe.alias.".to_string(), "x".to_string()),
            ("write.format.default".to_string(), "parquet".to_string()),
        ]);
        let a = aliases_from_properties(&props);
        assert_eq!(a.len(), 1);
        assert_eq!(a["ts"], "event_ts");
    }
}
