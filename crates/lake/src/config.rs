//! Catalog and storage settings (the `[catalog]` section of `floe.toml`).

use serde::{Deserialize, Serialize};

/// Where tables are registered and where their files live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Catalog database: `sqlite://path/catalog.db` (embedded) or `postgres://user:pw@host/db`
    /// (shared with Trino's `iceberg.catalog.type=jdbc`).
    pub uri: String,
    /// Warehouse root: a local folder or `s3://bucket/prefix`.
    pub warehouse: String,
    /// Catalog name (`catalog_name` column of the JDBC catalog tables).
    pub name: String,
}

impl CatalogConfig {
    /// The database file (as configured, maybe relative) and the query of an embedded
    /// `sqlite://PATH[?QUERY]` catalog; `None` for other catalogs.
    pub fn sqlite_file(&self) -> Option<(&str, &str)> {
        let rest = self.uri.strip_prefix("sqlite://")?;
        Some(rest.split_once('?').unwrap_or((rest, "")))
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            uri: "sqlite://floe-data/catalog.db".into(),
            warehouse: "floe-data/warehouse".into(),
            name: "floe".into(),
        }
    }
}

/// S3 (or MinIO) settings for an `s3://` warehouse (the `[s3]` section of `floe.toml`).
/// Unset credentials come from the usual AWS sources (`AWS_ACCESS_KEY_ID`, profiles, instance
/// roles). The secret is never printed: `Debug` and [`S3Config::redacted`] hide it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://minio:9000` (unset: AWS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (unset: from the AWS environment, or `us-east-1` with a custom endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style requests (`http://host/bucket/key`), as MinIO needs.
    pub path_style: bool,
    /// Access key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key (prefer `secret_access_key_file` or the environment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// A file holding the secret access key (e.g. a Docker or Kubernetes secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<String>,
}

/// What secrets are shown as.
pub const REDACTED: &str = "***";

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| REDACTED),
            )
            .field("secret_access_key_file", &self.secret_access_key_file)
            .finish()
    }
}

impl S3Config {
    /// The same settings with the secret hidden (for printing).
    pub fn redacted(&self) -> Self {
        Self {
            secret_access_key: self.secret_access_key.as_ref().map(|_| REDACTED.into()),
            ..self.clone()
        }
    }

    /// The secret access key: the value, else the file's content (trimmed).
    pub fn secret(&self) -> crate::Result<Option<String>> {
        if self.secret_access_key.is_some() {
            return Ok(self.secret_access_key.clone());
        }
        match &self.secret_access_key_file {
            None => Ok(None),
            Some(path) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|source| crate::Error::Io {
                    context: format!("reading s3.secret_access_key_file {path}"),
                    source,
                }),
        }
    }

    /// The region to use: the configured one, else `us-east-1` for a custom endpoint.
    pub fn effective_region(&self) -> Option<String> {
        self.region
            .clone()
            .or_else(|| self.endpoint.as_ref().map(|_| "us-east-1".to_string()))
    }

    /// Properties for iceberg-rust's S3 storage (`s3.endpoint`, `s3.path-style-access`, …).
    pub fn file_io_props(&self) -> crate::Result<Vec<(String, String)>> {
        let mut props = Vec::new();
        if let Some(e) = &self.endpoint {
            props.push(("s3.endpoint".into(), e.clone()));
        }
        if let Some(r) = self.effective_region() {
            props.push(("s3.region".into(), r));
        }
        props.push(("s3.path-style-access".into(), self.path_style.to_string()));
        if let Some(k) = &self.access_key_id {
            props.push(("s3.access-key-id".into(), k.clone()));
        }
        if let Some(s) = self.secret()? {
            props.push(("s3.secret-access-key".into(), s));
        }
        Ok(props)
    }
}

/// Whether `location` is on S3 (`s3://`, `s3a://`, `s3n://`).
pub fn is_s3(location: &str) -> bool {
    ["s3://", "s3a://", "s3n://"]
        .iter()
        .any(|p| location.starts_with(p))
}
