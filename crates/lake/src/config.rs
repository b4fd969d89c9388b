//! Catalog and storage settings (the `[catalog]` section of `floe.toml`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where tables are registered and where their files live.
///
/// `uri` selects the catalog: `sqlite://…` and `postgres://…` are SQL catalogs floe commits to
/// itself; `http://…` / `https://…` is an Iceberg REST catalog (Polaris, Lakekeeper, Glue,
/// S3 Tables, Nessie, Gravitino, Unity…). The keys after `name` apply to REST catalogs only.
/// Secrets (`token`, `credential`, secret-looking headers) never show in `Debug` or
/// [`CatalogConfig::redacted`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// SQL catalog database: `sqlite://path/catalog.db` (embedded) or
    /// `postgres://user:pw@host/db` (shared with Trino's `iceberg.catalog.type=jdbc`); or the
    /// REST catalog's base URI, before `/v1` (`https://polaris.example.com/api/catalog`).
    pub uri: String,
    /// SQL catalogs: the warehouse root, a local folder or `s3://bucket/prefix`. REST: the
    /// catalog's warehouse identifier sent to `GET /v1/config?warehouse=` (Polaris catalog
    /// name, Lakekeeper warehouse, Glue account id, S3 Tables bucket ARN); may be empty.
    pub warehouse: String,
    /// Catalog name (`catalog_name` column of the JDBC catalog tables; a label on REST).
    pub name: String,
    /// REST: a static bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// REST: a file holding the bearer token (read at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// REST: OAuth2 client credentials `client_id:client_secret`, exchanged for tokens
    /// (refreshed before they expire).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// REST: a file holding `client_id:client_secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_file: Option<String>,
    /// REST: the OAuth2 scope (default `catalog`; Polaris wants `PRINCIPAL_ROLE:ALL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// REST: the OAuth2 token endpoint (default `{uri}/v1/oauth/tokens`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth2_server_uri: Option<String>,
    /// REST: the OAuth2 `audience` parameter, when the token server wants one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// REST: the OAuth2 `resource` parameter, when the token server wants one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// REST: headers sent with every request. In a name, `_` stands for `-`, so
    /// `FLOE__CATALOG__HEADERS__X_TENANT=a` sends `x-tenant: a`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// REST: a PEM file of CA certificates trusted besides the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// REST: AWS SigV4 request signing (Glue and S3 Tables REST endpoints).
    #[serde(skip_serializing_if = "SigV4Config::is_default")]
    pub sigv4: SigV4Config,
    /// REST: `vended-credentials` asks the catalog for the table's storage credentials
    /// (`X-Iceberg-Access-Delegation`) and uses them instead of `[s3]`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_delegation: Option<String>,
    /// REST: how long one request may take (e.g. `30s`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// REST: how long connecting may take (e.g. `10s`).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// AWS Signature V4 signing of REST catalog requests, with credentials from the AWS default
/// chain (environment, profile, web identity / IRSA, ECS, instance metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigV4Config {
    /// Sign every request.
    pub enabled: bool,
    /// The region (unset: `AWS_REGION` / `AWS_DEFAULT_REGION`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The signing name: `glue` (Glue REST), `s3tables` (S3 Tables); default `execute-api`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl SigV4Config {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

impl std::fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.redacted();
        f.debug_struct("CatalogConfig")
            .field("uri", &r.uri)
            .field("warehouse", &r.warehouse)
            .field("name", &r.name)
            .field("token", &r.token)
            .field("token_file", &r.token_file)
            .field("credential", &r.credential)
            .field("credential_file", &r.credential_file)
            .field("scope", &r.scope)
            .field("oauth2_server_uri", &r.oauth2_server_uri)
            .field("headers", &r.headers)
            .field("ca_file", &r.ca_file)
            .field("sigv4", &r.sigv4)
            .field("access_delegation", &r.access_delegation)
            .finish_non_exhaustive()
    }
}

/// Whether a header of this name carries a secret (its value is never printed).
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "authorization",
        "token",
        "key",
        "secret",
        "cookie",
        "credential",
        "password",
    ]
    .iter()
    .any(|s| n.contains(s))
}

impl CatalogConfig {
    /// The database file (as configured, maybe relative) and the query of an embedded
    /// `sqlite://PATH[?QUERY]` catalog; `None` for other catalogs.
    pub fn sqlite_file(&self) -> Option<(&str, &str)> {
        let rest = self.uri.strip_prefix("sqlite://")?;
        Some(rest.split_once('?').unwrap_or((rest, "")))
    }

    /// The warehouse identifier to send a REST catalog: `warehouse`, except that the SQL
    /// catalogs' default folder (left in place when only `uri` was set) means none.
    pub fn rest_warehouse(&self) -> &str {
        if self.warehouse == Self::default().warehouse {
            ""
        } else {
            &self.warehouse
        }
    }

    /// Whether `uri` names an Iceberg REST catalog (`http://` or `https://`).
    pub fn is_rest(&self) -> bool {
        let u = self.uri.to_ascii_lowercase();
        u.starts_with("http://") || u.starts_with("https://")
    }

    /// The same settings with every secret hidden (for printing): the URI's password, the
    /// token, the client secret and secret-looking header values.
    pub fn redacted(&self) -> Self {
        let hide = |v: &Option<String>| v.as_ref().map(|_| REDACTED.to_string());
        Self {
            uri: crate::catalog::redact_uri(&self.uri),
            token: hide(&self.token),
            credential: self.credential.as_ref().map(|c| match c.split_once(':') {
                Some((id, _)) => format!("{id}:{REDACTED}"),
                None => REDACTED.to_string(),
            }),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret_header(k) {
                        REDACTED.to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
            ..self.clone()
        }
    }

    /// The keys set that only a REST catalog reads (for the error when the URI is SQL).
    pub fn rest_only_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let d = Self::default();
        let mut check = |set: bool, key: &'static str| {
            if set {
                keys.push(key);
            }
        };
        check(self.token.is_some(), "token");
        check(self.token_file.is_some(), "token_file");
        check(self.credential.is_some(), "credential");
        check(self.credential_file.is_some(), "credential_file");
        check(self.scope.is_some(), "scope");
        check(self.oauth2_server_uri.is_some(), "oauth2_server_uri");
        check(self.audience.is_some(), "audience");
        check(self.resource.is_some(), "resource");
        check(!self.headers.is_empty(), "headers");
        check(self.ca_file.is_some(), "ca_file");
        check(self.sigv4 != d.sigv4, "sigv4");
        check(self.access_delegation.is_some(), "access_delegation");
        keys
    }

    /// A secret given as a value or as a file (either trimmed), named `key` in messages.
    pub(crate) fn secret(
        value: &Option<String>,
        file: &Option<String>,
        key: &str,
    ) -> crate::Result<Option<String>> {
        Ok(read_secret(value, file, &format!("catalog.{key}"))?.map(|v| v.trim().to_string()))
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            uri: "sqlite://floe-data/catalog.db".into(),
            warehouse: "floe-data/warehouse".into(),
            name: "floe".into(),
            token: None,
            token_file: None,
            credential: None,
            credential_file: None,
            scope: None,
            oauth2_server_uri: None,
            audience: None,
            resource: None,
            headers: BTreeMap::new(),
            ca_file: None,
            sigv4: SigV4Config::default(),
            access_delegation: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
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
        read_secret(
            &self.secret_access_key,
            &self.secret_access_key_file,
            "s3.secret_access_key",
        )
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

/// A secret setting `key` given as a value, else as the file `key_file` names (its content
/// trimmed, e.g. a Docker or Kubernetes secret).
fn read_secret(
    value: &Option<String>,
    file: &Option<String>,
    key: &str,
) -> crate::Result<Option<String>> {
    if value.is_some() {
        return Ok(value.clone());
    }
    match file {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|source| crate::Error::Io {
                context: format!("reading {key}_file {path}"),
                source,
            }),
    }
}

/// Whether `location` is on S3 (`s3://`, `s3a://`, `s3n://`).
pub fn is_s3(location: &str) -> bool {
    ["s3://", "s3a://", "s3n://"]
        .iter()
        .any(|p| location.starts_with(p))
}
