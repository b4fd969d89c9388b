//! Connecting to a REST catalog: the HTTP client from floe's `[catalog]` settings (timeouts,
//! extra CA certificates, custom headers, auth), then the server's `GET /v1/config`, which
//! may move the URI and add a path prefix, and whose storage defaults and overrides frame
//! floe's `[s3]` settings (defaults < `[s3]` < overrides, the REST spec's order).

use std::sync::Arc;

use iceberg::io::{FileIO, FileIOBuilder};
use percent_encoding::utf8_percent_encode;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::auth::{Auth, SigV4};
use super::wire::ConfigResponse;
use super::{RestCatalog, SEGMENT, Vended};
use crate::catalog::redact_uri;
use crate::config::{CatalogConfig, S3Config};
use crate::{Error, Result};

impl RestCatalog {
    /// Reads the server's config (`GET /v1/config`) and builds the client and the file I/O
    /// for the catalog's tables.
    pub(crate) async fn connect(cfg: &CatalogConfig, s3: &S3Config) -> Result<(Self, FileIO)> {
        let vended = vended_credentials(cfg)?;
        let root = cfg.uri.trim_end_matches('/').to_string();
        let root = root.strip_suffix("/v1").unwrap_or(&root).to_string();
        let warehouse = cfg.rest_warehouse();
        let label = if warehouse.is_empty() {
            redact_uri(&root)
        } else {
            format!("{} (warehouse {warehouse})", redact_uri(&root))
        };

        let http = http_client(cfg)?;
        let mut headers = headers(cfg)?;
        let auth = Auth::of(cfg, &root)?;
        let sigv4 = if cfg.sigv4.enabled {
            Some(Arc::new(SigV4::new(&cfg.sigv4, &http)?))
        } else {
            None
        };
        if vended {
            headers.insert(
                "X-Iceberg-Access-Delegation",
                HeaderValue::from_static("vended-credentials"),
            );
        }
        let mut catalog = Self {
            http,
            base: format!("{root}/v1"),
            label,
            headers,
            auth: Arc::new(auth),
            sigv4,
            vended: None,
        };
        let config = catalog.read_config(&root, warehouse).await?;
        let root = config
            .setting("uri")
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or(root);
        catalog.base = match config.setting("prefix").filter(|p| !p.is_empty()) {
            Some(prefix) => format!("{root}/v1/{}", prefix.trim_matches('/')),
            None => format!("{root}/v1"),
        };

        let props = storage_props(&config, s3)?;
        let registry = Arc::new(crate::catalog::vended::Registry::default());
        if vended {
            catalog.vended = Some(Vended {
                registry: registry.clone(),
                props: Arc::new(props.iter().cloned().collect()),
            });
        }
        let file_io = FileIOBuilder::new(Arc::new(crate::catalog::vended::RoutingFactory {
            registry,
        }))
        .with_props(props)
        .build();
        Ok((catalog, file_io))
    }

    /// The server's config (`GET /v1/config`, for the warehouse when one is set).
    async fn read_config(&self, root: &str, warehouse: &str) -> Result<ConfigResponse> {
        let mut url = format!("{root}/v1/config");
        if !warehouse.is_empty() {
            url.push_str("?warehouse=");
            url.push_str(&utf8_percent_encode(warehouse, SEGMENT).to_string());
        }
        let body = self
            .call(Method::GET, &url, None, "reading the catalog's config")
            .await?;
        self.parse(&body, "reading the catalog's config")
    }
}

/// Whether `catalog.access_delegation` asks for vended credentials (the one delegation floe
/// supports); unset or empty is no delegation.
fn vended_credentials(cfg: &CatalogConfig) -> Result<bool> {
    match cfg.access_delegation.as_deref().map(str::trim) {
        None | Some("") => Ok(false),
        Some("vended-credentials") => Ok(true),
        Some(other) => Err(Error::Config(format!(
            "catalog.access_delegation = {other:?}: floe supports \"vended-credentials\" (remote signing is not supported); leave it unset to use [s3]"
        ))),
    }
}

/// The HTTP client: floe's user agent, the configured timeouts, and the certificates of
/// `catalog.ca_file` trusted besides the system's.
fn http_client(cfg: &CatalogConfig) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("floe/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.request_timeout);
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| Error::Io {
            context: format!("reading catalog.ca_file {path}"),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::Config(format!(
                "catalog.ca_file {path}: not a PEM bundle of certificates: {e}"
            ))
        })?;
        if certs.is_empty() {
            return Err(Error::Config(format!(
                "catalog.ca_file {path}: holds no PEM certificate"
            )));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("REST catalog client: {e}")))
}

/// The headers sent with every request: `catalog.headers` (`_` in a name becomes `-`; secret
/// ones marked sensitive) and floe's `X-Client-Version`.
fn headers(cfg: &CatalogConfig) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.replace('_', "-").as_bytes()).map_err(|_| {
            Error::Config(format!("catalog.headers.{k}: not a valid HTTP header name"))
        })?;
        let mut value = HeaderValue::from_str(v).map_err(|_| {
            Error::Config(format!(
                "catalog.headers.{k}: the value is not a valid HTTP header value"
            ))
        })?;
        value.set_sensitive(crate::config::is_secret_header(k));
        headers.insert(name, value);
    }
    headers.insert(
        "X-Client-Version",
        HeaderValue::from_static(concat!("floe/", env!("CARGO_PKG_VERSION"))),
    );
    Ok(headers)
}

/// The storage properties of the catalog's tables (the `s3.` ones of the server's config
/// around floe's `[s3]`).
fn storage_props(config: &ConfigResponse, s3: &S3Config) -> Result<Vec<(String, String)>> {
    // Storage settings: the server's defaults, then floe's [s3], then the server's
    // overrides (the REST spec's order).
    let mut props: Vec<(String, String)> = config
        .defaults
        .iter()
        .filter(|(k, _)| k.starts_with("s3."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    props.extend(s3.file_io_props()?);
    props.extend(
        config
            .overrides
            .iter()
            .filter(|(k, _)| k.starts_with("s3."))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    Ok(props)
}
