//! floe's one config model: built-in defaults → `floe.toml` → `FLOE__SECTION__KEY` environment
//! variables → command-line flags. Unknown keys are errors, so typos fail loudly.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use floe_lake::{CatalogConfig, S3Config};
use floe_loader::config::{KafkaConfig, LimitsConfig, MetricsConfig, PipelineConfig};
use serde::{Deserialize, Serialize};

/// Everything floe can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloeConfig {
    /// Catalog database and warehouse.
    pub catalog: CatalogConfig,
    /// S3 / MinIO settings for an `s3://` warehouse.
    pub s3: S3Config,
    /// Logging.
    pub log: LogConfig,
    /// Where table definitions live (`floe table create --all`).
    pub schemas_dir: String,
    /// Where aggregate definitions live (`*.sql`; the built-in ones when the folder is absent).
    pub aggregates_dir: String,
    /// Kafka connection and consumer group.
    pub kafka: KafkaConfig,
    /// Topic → table pipelines run by `floe run`.
    pub pipelines: Vec<PipelineConfig>,
    /// Prometheus `/metrics` and `/health`.
    pub metrics: MetricsConfig,
    /// What one message may cost (`max_message_bytes`).
    pub limits: LimitsConfig,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `plain` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `floe=debug,warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "plain".into(),
            level: "info".into(),
        }
    }
}

impl FloeConfig {
    /// The aggregate definitions: `aggregates_dir`, or the built-in ones when it is absent.
    pub fn aggregate_definitions(&self) -> Result<Vec<floe_aggregate::AggregateDef>> {
        if Path::new(&self.aggregates_dir).is_dir() {
            Ok(floe_aggregate::AggregateDef::load_dir(Path::new(
                &self.aggregates_dir,
            ))?)
        } else {
            Ok(floe_aggregate::AggregateDef::builtin()?)
        }
    }

    /// The pipeline loading `table`, with its index (its mapping applies to `floe load` and
    /// `floe dlq replay` of the table too).
    pub fn pipeline_for(&self, table: &str) -> Option<(usize, &PipelineConfig)> {
        self.pipelines
            .iter()
            .enumerate()
            .find(|(_, p)| p.table == table)
    }

    /// The mapping the configured pipeline of `table` lays over the table's own, with where it
    /// is configured (`pipelines[0]`); empty when no pipeline loads the table.
    pub fn mapping_for(&self, table: &str) -> (floe_schema::Mapping, String) {
        match self.pipeline_for(table) {
            Some((i, p)) => (p.mapping(), format!("pipelines[{i}]")),
            None => (floe_schema::Mapping::default(), "pipeline".to_string()),
        }
    }

    /// Loads the layered config. `file` is `--config`; without it `./floe.toml` is read if
    /// present. `overrides` are flag values as a partial config.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(FloeConfig::with_defaults()));
        match file {
            Some(path) => {
                if !path.exists() {
                    anyhow::bail!("config file {} does not exist", path.display());
                }
                fig = fig.merge(Toml::file(path));
            }
            None => {
                let default = PathBuf::from("floe.toml");
                if default.exists() {
                    fig = fig.merge(Toml::file(default));
                }
            }
        }
        fig = fig
            .merge(Env::prefixed("FLOE__").split("__"))
            .merge(overrides);
        let mut cfg: Self = fig.extract().context("invalid configuration")?;
        cfg.kafka
            .resolve_property_files()
            .map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }

    /// The effective config as TOML with every secret hidden (`floe --print-config`): the
    /// catalog URI's password, the S3 secret, secret Kafka properties.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.catalog = c.catalog.redacted();
        c.s3 = c.s3.redacted();
        c.kafka.properties = floe_loader::source::kafka::redacted(&c.kafka.properties);
        toml::to_string_pretty(&c).expect("config serializes")
    }

    fn with_defaults() -> Self {
        Self {
            schemas_dir: "schemas".into(),
            aggregates_dir: "sql/aggregates".into(),
            ..Default::default()
        }
    }

    /// The documented default config (`floe --print-default-config`).
    pub fn default_toml() -> String {
        let mut example = Self::with_defaults();
        example.pipelines.push(PipelineConfig {
            topics: vec!["events".into()],
            table: "lake.events".into(),
            ..Default::default()
        });
        let body = toml::to_string_pretty(&example).expect("config serializes");
        format!(
            "# floe configuration. Every key can also be set as an environment variable\n\
             # FLOE__SECTION__KEY (e.g. FLOE__CATALOG__URI) and most by a flag.\n\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_typos_fail() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("floe.toml");
        std::fs::write(
            &file,
            "[catalog]\nuri = \"sqlite://x.db\"\nname = \"from_file\"\n",
        )
        .unwrap();
        let flags = Figment::new().merge(Serialized::default("catalog.name", "from_flag"));
        let cfg = FloeConfig::load(Some(&file), flags).unwrap();
        assert_eq!(cfg.catalog.uri, "sqlite://x.db");
        assert_eq!(cfg.catalog.name, "from_flag");
        assert_eq!(cfg.catalog.warehouse, "floe-data/warehouse");

        std::fs::write(&file, "[catalog]\nurl = \"typo\"\n").unwrap();
        let err = FloeConfig::load(Some(&file), Figment::new()).unwrap_err();
        assert!(format!("{err:#}").contains("url"), "{err:#}");
    }

    #[test]
    fn kafka_properties_flatten_and_secrets_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("kafka-password");
        std::fs::write(&secret, "from-a-file\n").unwrap();
        let file = dir.path().join("floe.toml");
        std::fs::write(
            &file,
            format!(
                "[catalog]\nuri = \"postgres://floe:pgpass@db/iceberg\"\n\
                 [s3]\nendpoint = \"http://minio:9000\"\npath_style = true\n\
                 access_key_id = \"AKIA\"\nsecret_access_key = \"s3pass\"\n\
                 [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\
                 sasl.mechanism = \"SCRAM-SHA-512\"\nsasl.username = \"loader\"\n\
                 \"enable.ssl.certificate.verification\" = true\n\
                 [kafka.property_files]\n\"sasl.password\" = \"{}\"\n",
                secret.display()
            ),
        )
        .unwrap();
        let cfg = FloeConfig::load(Some(&file), Figment::new()).unwrap();
        let p = &cfg.kafka.properties;
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["enable.ssl.certificate.verification"], "true");
        assert_eq!(p["sasl.password"], "from-a-file");
        assert!(cfg.s3.path_style);
        let printed = cfg.redacted_toml();
        for secret in ["from-a-file", "s3pass", "pgpass"] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(printed.contains("SCRAM-SHA-512") && printed.contains("AKIA"));
        assert!(!format!("{cfg:?}").contains("s3pass"));

        std::fs::write(
            &file,
            "[kafka.property_files]\n\"sasl.password\" = \"/nonexistent/pw\"\n",
        )
        .unwrap();
        let err = FloeConfig::load(Some(&file), Figment::new()).unwrap_err();
        assert!(
            format!("{err:#}").contains("sasl.password")
                && format!("{err:#}").contains("/nonexistent/pw"),
            "{err:#}"
        );
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn cases() -> u32 {
            floe_testkit::fuzz_cases()
        }

        /// TOML-ish text: sections and keys floe knows (and some it does not), with values of
        /// every TOML type, sizes and durations well- and ill-formed, deep dotted keys.
        /// (`kafka.property_files` is left out: it reads the files it names.)
        fn config_text() -> impl Strategy<Value = String> {
            let section = prop_oneof![
                Just("[catalog]"),
                Just("[s3]"),
                Just("[log]"),
                Just("[kafka]"),
                Just("[kafka.properties]"),
                Just("[[pipelines]]"),
                Just("[pipelines.flush]"),
                Just("[metrics]"),
                Just("[limits]"),
                Just("[nope]"),
                Just(""),
            ];
            let key = prop_oneof![
                Just("uri".to_string()),
                Just("warehouse".to_string()),
                Just("brokers".to_string()),
                Just("topics".to_string()),
                Just("table".to_string()),
                Just("max_bytes".to_string()),
                Just("max_rows".to_string()),
                Just("interval".to_string()),
                Just("max_message_bytes".to_string()),
                Just("dedup_window".to_string()),
                Just("stale_after_intervals".to_string()),
                Just("columns.x".to_string()),
                Just("computed.x".to_string()),
                Just("unnest".to_string()),
                "[a-z]{1,3}(\\.[a-z]{1,3}){0,40}",
            ];
            let value = prop_oneof![
                Just("\"4MiB\"".to_string()),
                Just("\"-1MiB\"".to_string()),
                Just("\"99999999999999999999 EiB\"".to_string()),
                Just("\"60s\"".to_string()),
                Just("\"1e400s\"".to_string()),
                Just("[\"a\", 1]".to_string()),
                Just("{ a = { b = { c = 1 } } }".to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                any::<bool>().prop_map(|b| b.to_string()),
                "\"\\PC{0,12}\"".prop_map(|s| s.replace('\\', "")),
                "\\PC{0,12}",
            ];
            proptest::collection::vec(
                (section, proptest::collection::vec((key, value), 0..4)),
                0..5,
            )
            .prop_map(|sections| {
                let mut out = String::new();
                for (s, kvs) in sections {
                    out.push_str(s);
                    out.push('\n');
                    for (k, v) in kvs {
                        out.push_str(&format!("{k} = {v}\n"));
                    }
                }
                out
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

            /// Any config file loads or fails with an error; the loaded config prints.
            #[test]
            fn fuzz_config_files_load_or_fail_never_panic(
                text in prop_oneof![config_text(), "\\PC{0,200}"],
            ) {
                let dir = tempfile::tempdir().unwrap();
                let file = dir.path().join("floe.toml");
                std::fs::write(&file, &text).unwrap();
                if let Ok(cfg) = FloeConfig::load(Some(&file), Figment::new()) {
                    let _ = cfg.redacted_toml();
                    for (i, p) in cfg.pipelines.iter().enumerate() {
                        let _ = p.validate(i);
                    }
                    let _ = cfg.limits.max_message_bytes();
                }
            }
        }
    }

    #[test]
    fn default_config_round_trips() {
        let text = FloeConfig::default_toml();
        let parsed: FloeConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed.catalog, FloeConfig::with_defaults().catalog);
        assert_eq!(parsed.pipelines.len(), 1);
        assert_eq!(
            parsed.pipelines[0].flush.interval,
            std::time::Duration::from_secs(60)
        );
    }
}
