//! Mappings the benchmarks measure.

use floe_schema::Mapping;

/// The mapping `floe bench` and the transform benchmark measure: two computed columns and two
/// rules, the examples of the mapping's documentation (normalizing, scaling; the rules hold
/// for seed events, so what is measured is evaluating them, not writing dead letters).
pub fn benchmark_mapping() -> Mapping {
    Mapping {
        computed: [
            ("country".to_string(), "lower(country)".to_string()),
            ("value".to_string(), "value * 100".to_string()),
        ]
        .into(),
        rules: [
            ("non_negative_value".to_string(), "value >= 0".to_string()),
            (
                "known_country".to_string(),
                "country IS NOT NULL".to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    }
}
