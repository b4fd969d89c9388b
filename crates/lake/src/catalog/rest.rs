//! An Iceberg REST catalog client (the REST catalog spec's `/v1` API, with the conventions of
//! PyIceberg's and Iceberg Java's clients), just what floe's catalog model needs.
//!
//! floe keeps its own client rather than `iceberg-catalog-rest` because it owns the commit: it
//! sends its own requirements and updates (that crate only commits through a `Transaction`,
//! which rebases silently), and it must tell a lost race (409) from a commit whose outcome is
//! unknown (5xx, a timeout, a cut connection) from one the server refused (4xx).
//!
//! - `GET /v1/config?warehouse=…` first: the server's `prefix`, `uri` and storage defaults and
//!   overrides.
//! - Auth: a static bearer token, or OAuth2 client credentials exchanged at the token endpoint
//!   and refreshed at 80 % of their lifetime and once on a 401; custom headers; extra CA
//!   certificates. Secrets never reach logs or messages.
//! - Idempotent reads are retried a few times on 429, 502–504 and connection failures; a
//!   commit is never resent blindly (only after a 401, which applied nothing).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceberg::io::{FileIO, FileIOBuilder};
use iceberg::spec::TableMetadata;
use iceberg::{NamespaceIdent, TableIdent, TableRequirement, TableUpdate};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Outcome, redact_text, redact_uri};
use crate::config::{CatalogConfig, S3Config};
use crate::{Error, Result};
use floe_schema::TableDefinition;

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How often an idempotent request is tried when the server is busy or unreachable.
const READ_TRIES: u32 = 4;

/// What a failed REST request tells about the catalog's state and what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestFailure {
    /// 409: another writer changed the table first, or what is created exists.
    Conflict,
    /// 404: no such table or namespace.
    NotFound,
    /// 401 or 403: the credentials are wrong, expired or lack a privilege.
    Unauthorized,
    /// Another 4xx: the request is wrong for this server.
    BadRequest,
    /// 429: the server refused the request for now (nothing applied).
    RateLimited,
    /// 503: the server or a proxy in front of it is unavailable.
    Unavailable,
    /// 500, 502, 504 and other 5xx: the server (or a gateway) failed; a commit may have been
    /// applied.
    ServerError,
    /// The request was sent but no (whole) reply came: a timeout or a cut connection.
    NoReply,
    /// The server could not be reached: nothing was sent.
    NotSent,
}

impl RestFailure {
    fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            409 => Self::Conflict,
            404 => Self::NotFound,
            401 | 403 | 419 => Self::Unauthorized,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            500..=599 => Self::ServerError,
            _ => Self::BadRequest,
        }
    }

    /// Whether trying the same request again later may succeed.
    pub fn is_transient(self) -> bool {
        !matches!(self, Self::NotFound | Self::Unauthorized | Self::BadRequest)
    }

    /// Whether a commit that failed this way may nevertheless have been applied.
    fn commit_may_have_landed(self) -> bool {
        matches!(self, Self::Unavailable | Self::ServerError | Self::NoReply)
    }
}

/// An Iceberg REST error response (`{"error": {"message", "type", "code"}}`) or an OAuth2
/// one (`{"error": "invalid_client", "error_description": …}`), as one line.
fn error_detail(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let what = match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(Value::Object(e)) => {
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            match e.get("type").and_then(Value::as_str) {
                Some(t) => format!("{t}: {message}"),
                None => message.to_string(),
            }
        }
        Some(Value::String(code)) => {
            let desc = parsed
                .as_ref()
                .and_then(|v| v.get("error_description"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{code} {desc}").trim().to_string()
        }
        _ => {
            let t = text.trim();
            let mut end = t.len().min(300);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t[..end].to_string()
        }
    };
    let reason = status.canonical_reason().unwrap_or("");
    if what.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
    } else {
        format!("HTTP {} {reason}: {}", status.as_u16(), redact_text(&what))
    }
}

/// How floe proves who it is to the catalog.
enum Auth {
    None,
    Token(String),
    OAuth2(OAuth2),
}

/// OAuth2 client credentials and the token they were last exchanged for.
struct OAuth2 {
    endpoint: String,
    client_id: String,
    client_secret: String,
    scope: String,
    audience: Option<String>,
    resource: Option<String>,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

struct CachedToken {
    token: String,
    refresh_at: Option<Instant>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl OAuth2 {
    /// A valid token: the cached one unless it is due for refresh (or was rejected).
    async fn token(&self, http: &reqwest::Client, label: &str) -> Result<String> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(c.token.clone());
        }
        let fresh = self.exchange(http, label).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets `rejected` (a 401 came back for it) so the next call gets a new token.
    async fn forget(&self, rejected: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == rejected) {
            *cached = None;
        }
    }

    async fn exchange(&self, http: &reqwest::Client, label: &str) -> Result<CachedToken> {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("scope", self.scope.as_str()),
        ];
        if let Some(a) = &self.audience {
            form.push(("audience", a));
        }
        if let Some(r) = &self.resource {
            form.push(("resource", r));
        }
        let context = format!(
            "getting an OAuth2 token for client {} from {}",
            self.client_id,
            redact_uri(&self.endpoint)
        );
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=READ_TRIES {
            let sent = http.post(&self.endpoint).form(&form).send().await;
            let failure = match sent {
                Ok(resp) if resp.status().is_success() => {
                    let body = resp.bytes().await.map_err(|e| {
                        rest_error(label, &context, RestFailure::NoReply, None, e.to_string())
                    })?;
                    let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                        rest_error(
                            label,
                            &context,
                            RestFailure::BadRequest,
                            None,
                            format!("the token response is not an OAuth2 token: {e}"),
                        )
                    })?;
                    let refresh_at = t.expires_in.map(|s| {
                        // Refresh at 80 % of the lifetime, so no request carries a token
                        // about to expire.
                        Instant::now() + Duration::from_millis(s.saturating_mul(800))
                    });
                    return Ok(CachedToken {
                        token: t.access_token,
                        refresh_at,
                    });
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    let failure = RestFailure::of(status);
                    let mut detail = error_detail(status, &body);
                    if failure == RestFailure::Unauthorized || status == StatusCode::BAD_REQUEST {
                        detail.push_str(
                            "; check catalog.credential (client_id:client_secret), catalog.scope and catalog.oauth2_server_uri",
                        );
                    }
                    (failure, Some(status.as_u16()), detail)
                }
                Err(e) => (transport_failure(&e), None, transport_detail(&e)),
            };
            if !failure.0.is_transient() || attempt == READ_TRIES {
                return Err(rest_error(label, &context, failure.0, failure.1, failure.2));
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        unreachable!("the last attempt returns")
    }
}

fn transport_failure(e: &reqwest::Error) -> RestFailure {
    if e.is_connect() || e.is_builder() {
        RestFailure::NotSent
    } else {
        RestFailure::NoReply
    }
}

/// The transport error with its causes (reqwest's own message is only "error sending
/// request").
fn transport_detail(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    redact_text(&parts.join(": "))
}

fn rest_error(
    label: &str,
    context: &str,
    failure: RestFailure,
    status: Option<u16>,
    detail: String,
) -> Error {
    Error::Rest {
        catalog: label.to_string(),
        context: context.to_string(),
        failure,
        status,
        detail,
    }
}

#[derive(Deserialize)]
struct ConfigResponse {
    #[serde(default)]
    defaults: HashMap<String, String>,
    #[serde(default)]
    overrides: HashMap<String, String>,
}

#[derive(Deserialize)]
struct LoadTableResponse {
    #[serde(rename = "metadata-location")]
    metadata_location: Option<String>,
    metadata: TableMetadata,
    #[serde(default)]
    config: HashMap<String, String>,
    #[serde(rename = "storage-credentials", default)]
    storage_credentials: Vec<StorageCredential>,
}

#[derive(Deserialize)]
struct StorageCredential {
    prefix: String,
    #[serde(default)]
    config: HashMap<String, String>,
}

impl LoadTableResponse {
    /// The vended credential for `location`: the storage credential of the longest prefix
    /// that holds it, else the one in `config`.
    fn credential_for(&self, location: &str) -> Option<(String, HashMap<String, String>)> {
        let location = location.trim_end_matches('/');
        self.storage_credentials
            .iter()
            .filter(|c| location.starts_with(c.prefix.trim_end_matches('/')))
            .max_by_key(|c| c.prefix.len())
            .map(|c| (c.prefix.clone(), c.config.clone()))
            .or_else(|| {
                self.config
                    .contains_key("s3.access-key-id")
                    .then(|| (location.to_string(), self.config.clone()))
            })
    }
}

#[derive(Deserialize)]
struct ListNamespacesResponse {
    #[serde(default)]
    namespaces: Vec<Vec<String>>,
    #[serde(rename = "next-page-token", default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct TableIdentifier {
    namespace: Vec<String>,
    name: String,
}

#[derive(Deserialize)]
struct ListTablesResponse {
    #[serde(default)]
    identifiers: Vec<TableIdentifier>,
    #[serde(rename = "next-page-token", default)]
    next_page_token: Option<String>,
}

/// A connected REST catalog (cheap to clone: vended credentials keep one to renew).
#[derive(Clone)]
pub(crate) struct RestCatalog {
    http: reqwest::Client,
    /// `{uri}/v1` plus `/{prefix}` when the server gave one.
    base: String,
    /// The URI (redacted) and warehouse, for messages.
    label: String,
    headers: HeaderMap,
    auth: Arc<Auth>,
    sigv4: Option<Arc<SigV4>>,
    /// With vended credentials: the tables' storages.
    vended: Option<Vended>,
}

/// The tables' storages with vended credentials, and the storage properties they start from.
#[derive(Clone)]
struct Vended {
    registry: Arc<super::vended::Registry>,
    props: Arc<HashMap<String, String>>,
}

/// AWS SigV4 signing with credentials from the AWS default chain, as Iceberg Java's
/// `RESTSigV4AuthSession` signs: the body's SHA-256 in `x-amz-content-sha256`, and a bearer
/// token, if any, moved to `Original-Authorization`.
struct SigV4 {
    signer: reqsign_core::Signer<reqsign_aws_v4::Credential>,
}

/// reqsign's HTTP client (for credential sources that call out: web identity, ECS, IMDS).
#[derive(Debug, Clone)]
struct ReqwestSend(reqwest::Client);

impl reqsign_core::HttpSend for ReqwestSend {
    async fn http_send(
        &self,
        req: http::Request<bytes::Bytes>,
    ) -> reqsign_core::Result<http::Response<bytes::Bytes>> {
        let fail = |e: reqwest::Error| {
            reqsign_core::Error::unexpected("sending a credential request").with_source(e)
        };
        let req = reqwest::Request::try_from(req).map_err(fail)?;
        let resp = self.0.execute(req).await.map_err(fail)?;
        let mut out = http::Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        let body = resp.bytes().await.map_err(fail)?;
        out.body(body).map_err(|e| {
            reqsign_core::Error::unexpected("reading a credential response").with_source(e)
        })
    }
}

impl SigV4 {
    fn new(cfg: &crate::config::SigV4Config, http: &reqwest::Client) -> Result<Self> {
        let region = cfg
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "catalog.sigv4 needs a region: set catalog.sigv4.region or AWS_REGION".into(),
                )
            })?;
        let service = cfg.service.as_deref().unwrap_or("execute-api");
        let ctx = reqsign_core::Context::new()
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_http_send(ReqwestSend(http.clone()))
            .with_env(reqsign_core::OsEnv);
        Ok(Self {
            signer: reqsign_core::Signer::new(
                ctx,
                reqsign_aws_v4::DefaultCredentialProvider::new(),
                reqsign_aws_v4::RequestSigner::new(service, &region),
            ),
        })
    }

    /// Signs `req` in place.
    async fn sign(&self, req: &mut reqwest::Request) -> std::result::Result<(), String> {
        use sha2::{Digest, Sha256};
        let body: &[u8] = req.body().and_then(|b| b.as_bytes()).unwrap_or(&[]);
        let digest = Sha256::digest(body);
        let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let mut headers = req.headers().clone();
        if let Some(auth) = headers.remove(reqwest::header::AUTHORIZATION) {
            headers.insert("original-authorization", auth);
        }
        headers.insert(
            "x-amz-content-sha256",
            HeaderValue::from_str(&hash).expect("hex is a header value"),
        );
        let (mut parts, ()) = http::Request::builder()
            .method(req.method().clone())
            .uri(req.url().as_str())
            .body(())
            .map_err(|e| e.to_string())?
            .into_parts();
        parts.headers = headers;
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| format!("signing the request (AWS SigV4): {e}"))?;
        *req.headers_mut() = parts.headers;
        Ok(())
    }
}

impl RestCatalog {
    /// Reads the server's config (`GET /v1/config`) and builds the client and the file I/O
    /// for the catalog's tables.
    pub(crate) async fn connect(cfg: &CatalogConfig, s3: &S3Config) -> Result<(Self, FileIO)> {
        let vended = match cfg.access_delegation.as_deref().map(str::trim) {
            None | Some("") => false,
            Some("vended-credentials") => true,
            Some(other) => {
                return Err(Error::Config(format!(
                    "catalog.access_delegation = {other:?}: floe supports \"vended-credentials\" (remote signing is not supported); leave it unset to use [s3]"
                )));
            }
        };
        let root = cfg.uri.trim_end_matches('/').to_string();
        let root = root.strip_suffix("/v1").unwrap_or(&root).to_string();
        let warehouse = cfg.rest_warehouse();
        let label = if warehouse.is_empty() {
            redact_uri(&root)
        } else {
            format!("{} (warehouse {warehouse})", redact_uri(&root))
        };

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
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("REST catalog client: {e}")))?;

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

        let token = CatalogConfig::secret(&cfg.token, &cfg.token_file, "token")?;
        let credential =
            CatalogConfig::secret(&cfg.credential, &cfg.credential_file, "credential")?;
        let auth = match (token, credential) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "catalog.token and catalog.credential are both set: give one (a static token, or OAuth2 client credentials)".into(),
                ));
            }
            (Some(t), None) if !t.is_empty() => Auth::Token(t),
            (Some(_), None) => {
                return Err(Error::Config("catalog.token is empty".into()));
            }
            (None, Some(c)) => {
                let (id, secret) = match c.split_once(':') {
                    Some((id, secret)) => (id.to_string(), secret.to_string()),
                    None => (String::new(), c.clone()),
                };
                if secret.is_empty() {
                    return Err(Error::Config(
                        "catalog.credential: expected client_id:client_secret".into(),
                    ));
                }
                if cfg.oauth2_server_uri.is_none() {
                    tracing::debug!(
                        "catalog.oauth2_server_uri is not set; using the catalog's {root}/v1/oauth/tokens (deprecated by the REST spec)"
                    );
                }
                Auth::OAuth2(OAuth2 {
                    endpoint: cfg
                        .oauth2_server_uri
                        .clone()
                        .unwrap_or_else(|| format!("{root}/v1/oauth/tokens")),
                    client_id: id,
                    client_secret: secret,
                    scope: cfg.scope.clone().unwrap_or_else(|| "catalog".into()),
                    audience: cfg.audience.clone(),
                    resource: cfg.resource.clone(),
                    cached: tokio::sync::Mutex::new(None),
                })
            }
            (None, None) => Auth::None,
        };

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
        let mut url = format!("{root}/v1/config");
        if !warehouse.is_empty() {
            url.push_str("?warehouse=");
            url.push_str(&utf8_percent_encode(warehouse, SEGMENT).to_string());
        }
        let body = catalog
            .call(Method::GET, &url, None, "reading the catalog's config")
            .await?;
        let config: ConfigResponse = catalog.parse(&body, "reading the catalog's config")?;
        let setting = |k: &str| {
            config
                .overrides
                .get(k)
                .or_else(|| config.defaults.get(k))
                .cloned()
        };
        let root = setting("uri")
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or(root);
        catalog.base = match setting("prefix").filter(|p| !p.is_empty()) {
            Some(prefix) => format!("{root}/v1/{}", prefix.trim_matches('/')),
            None => format!("{root}/v1"),
        };

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
        let registry = Arc::new(super::vended::Registry::default());
        if vended {
            catalog.vended = Some(Vended {
                registry: registry.clone(),
                props: Arc::new(props.iter().cloned().collect()),
            });
        }
        let file_io = FileIOBuilder::new(Arc::new(super::vended::RoutingFactory { registry }))
            .with_props(props)
            .build();
        Ok((catalog, file_io))
    }

    /// The URI and warehouse, for messages.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn namespace_path(&self, ns: &NamespaceIdent) -> String {
        let joined = ns.as_ref().join("\u{1f}");
        format!(
            "{}/namespaces/{}",
            self.base,
            utf8_percent_encode(&joined, SEGMENT)
        )
    }

    fn table_path(&self, t: &TableIdent) -> String {
        format!(
            "{}/tables/{}",
            self.namespace_path(t.namespace()),
            utf8_percent_encode(t.name(), SEGMENT)
        )
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &[u8], context: &str) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| {
            rest_error(
                &self.label,
                context,
                RestFailure::BadRequest,
                None,
                format!("unexpected response: {e}"),
            )
        })
    }

    /// Sends one request with the catalog's headers and auth. A 401 gets a fresh OAuth2
    /// token and one more try (nothing was applied); idempotent requests (`GET`, `HEAD`,
    /// `DELETE`) are tried again on 429, 502–504 and connection failures. Returns the body
    /// of a 2xx reply.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        context: &str,
    ) -> Result<bytes::Bytes> {
        let idempotent = method != Method::POST;
        let mut refreshed = false;
        let mut attempt = 0;
        let mut pause = Duration::from_millis(200);
        loop {
            attempt += 1;
            let token = match self.auth.as_ref() {
                Auth::None => None,
                Auth::Token(t) => Some(t.clone()),
                Auth::OAuth2(o) => Some(o.token(&self.http, &self.label).await?),
            };
            let mut req = self
                .http
                .request(method.clone(), url)
                .headers(self.headers.clone());
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let mut req = req.build().map_err(|e| {
                rest_error(
                    &self.label,
                    context,
                    RestFailure::BadRequest,
                    None,
                    e.to_string(),
                )
            })?;
            if let Some(s) = &self.sigv4 {
                s.sign(&mut req).await.map_err(|detail| {
                    rest_error(&self.label, context, RestFailure::NotSent, None, detail)
                })?;
            }
            let (failure, status, detail) = match self.http.execute(req).await {
                Ok(resp) if resp.status().is_success() => {
                    return resp.bytes().await.map_err(|e| {
                        rest_error(
                            &self.label,
                            context,
                            RestFailure::NoReply,
                            None,
                            transport_detail(&e),
                        )
                    });
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let body = resp.bytes().await.unwrap_or_default();
                    if status == StatusCode::UNAUTHORIZED
                        && !refreshed
                        && let (Auth::OAuth2(o), Some(t)) = (self.auth.as_ref(), &token)
                    {
                        o.forget(t).await;
                        refreshed = true;
                        attempt -= 1;
                        continue;
                    }
                    if let Some(s) = retry_after {
                        pause = Duration::from_secs(s.min(30));
                    }
                    let mut detail = error_detail(status, &body);
                    if RestFailure::of(status) == RestFailure::Unauthorized {
                        detail.push_str(match self.auth.as_ref() {
                            Auth::None => "; the catalog wants credentials: set catalog.token or catalog.credential",
                            _ => "; check the catalog credentials (catalog.token / catalog.credential) and their privileges",
                        });
                    }
                    (RestFailure::of(status), Some(status.as_u16()), detail)
                }
                Err(e) => (transport_failure(&e), None, transport_detail(&e)),
            };
            let again = match failure {
                RestFailure::NotSent | RestFailure::RateLimited => true,
                RestFailure::Unavailable | RestFailure::ServerError | RestFailure::NoReply => {
                    idempotent && status != Some(500)
                }
                _ => false,
            };
            if !again || attempt >= READ_TRIES {
                return Err(rest_error(&self.label, context, failure, status, detail));
            }
            tracing::debug!(catalog = %self.label, %context, %detail, attempt, "REST catalog request failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// Whether the namespace exists.
    async fn namespace_exists(&self, ns: &NamespaceIdent) -> Result<bool> {
        let context = format!("looking up namespace {}", ns.join("."));
        match self
            .call(Method::GET, &self.namespace_path(ns), None, &context)
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::Rest {
                failure: RestFailure::NotFound,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the namespace and its parents unless they exist.
    pub(crate) async fn create_namespace(&self, ns: &NamespaceIdent) -> Result<()> {
        if self.namespace_exists(ns).await? {
            return Ok(());
        }
        let levels = ns.as_ref();
        for depth in 1..=levels.len() {
            let part = &levels[..depth];
            let context = format!("creating namespace {}", part.join("."));
            let body = json!({"namespace": part, "properties": {}});
            match self
                .call(
                    Method::POST,
                    &format!("{}/namespaces", self.base),
                    Some(&body),
                    &context,
                )
                .await
            {
                Ok(_)
                | Err(Error::Rest {
                    failure: RestFailure::Conflict,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Every table in every namespace (namespaces walked from the top, pages followed).
    pub(crate) async fn list_tables(&self) -> Result<Vec<TableIdent>> {
        let mut tables = Vec::new();
        let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
        let mut queue: Vec<Vec<String>> = self.list_namespaces(None).await?;
        while let Some(ns) = queue.pop() {
            if ns.is_empty() || !seen.insert(ns.clone()) {
                continue;
            }
            let ident = NamespaceIdent::from_vec(ns.clone())?;
            let context = format!("listing the tables of {}", ns.join("."));
            let mut token: Option<String> = None;
            loop {
                let mut url = format!("{}/tables", self.namespace_path(&ident));
                if let Some(t) = &token {
                    url.push_str("?pageToken=");
                    url.push_str(&utf8_percent_encode(t, SEGMENT).to_string());
                }
                let body = self.call(Method::GET, &url, None, &context).await?;
                let page: ListTablesResponse = self.parse(&body, &context)?;
                for t in page.identifiers {
                    tables.push(TableIdent::new(
                        NamespaceIdent::from_vec(t.namespace)?,
                        t.name,
                    ));
                }
                match page.next_page_token {
                    Some(t) if !t.is_empty() && token.as_ref() != Some(&t) => token = Some(t),
                    _ => break,
                }
            }
            // Children; a server without nested namespaces may refuse `parent`.
            match self.list_namespaces(Some(&ident)).await {
                Ok(children) => queue.extend(
                    children
                        .into_iter()
                        .filter(|c| c.len() > ns.len() && c.starts_with(&ns)),
                ),
                Err(Error::Rest {
                    failure: RestFailure::BadRequest | RestFailure::NotFound,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(tables)
    }

    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> Result<Vec<Vec<String>>> {
        let context = match parent {
            Some(p) => format!("listing the namespaces in {}", p.join(".")),
            None => "listing namespaces".to_string(),
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = Vec::new();
            if let Some(p) = parent {
                query.push(format!(
                    "parent={}",
                    utf8_percent_encode(&p.as_ref().join("\u{1f}"), SEGMENT)
                ));
            }
            if let Some(t) = &token {
                query.push(format!("pageToken={}", utf8_percent_encode(t, SEGMENT)));
            }
            let mut url = format!("{}/namespaces", self.base);
            if !query.is_empty() {
                url.push('?');
                url.push_str(&query.join("&"));
            }
            let body = self.call(Method::GET, &url, None, &context).await?;
            let page: ListNamespacesResponse = self.parse(&body, &context)?;
            out.extend(page.namespaces);
            match page.next_page_token {
                Some(t) if !t.is_empty() && token.as_ref() != Some(&t) => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The table's metadata location and metadata (`GET …/tables/{t}`).
    pub(crate) async fn load_table(&self, ident: &TableIdent) -> Result<(String, TableMetadata)> {
        let context = format!("loading table {ident}");
        let body = match self
            .call(
                Method::GET,
                &format!("{}?snapshots=all", self.table_path(ident)),
                None,
                &context,
            )
            .await
        {
            Err(Error::Rest {
                failure: RestFailure::NotFound,
                ..
            }) => return Err(Error::NoSuchTable(ident.to_string())),
            other => other?,
        };
        self.loaded(ident, &body, &context)
    }

    /// A load-table result's metadata location and metadata, its vended credentials kept.
    fn loaded(
        &self,
        ident: &TableIdent,
        body: &[u8],
        context: &str,
    ) -> Result<(String, TableMetadata)> {
        let loaded: LoadTableResponse = self.parse(body, context)?;
        self.keep_credentials(ident, &loaded)?;
        let location = loaded.metadata_location.ok_or_else(|| {
            rest_error(
                &self.label,
                context,
                RestFailure::BadRequest,
                None,
                "the response has no metadata-location (a staged table?)".into(),
            )
        })?;
        Ok((location, loaded.metadata))
    }

    /// With vended credentials: keeps the ones `loaded` carries for the table's location.
    fn keep_credentials(&self, ident: &TableIdent, loaded: &LoadTableResponse) -> Result<()> {
        let Some(Vended {
            registry,
            props: base,
        }) = &self.vended
        else {
            return Ok(());
        };
        let location = loaded.metadata.location();
        let Some((prefix, config)) = loaded.credential_for(location) else {
            tracing::debug!(table = %ident, "the catalog vended no S3 credentials; using [s3]");
            return Ok(());
        };
        let Some(credential) = super::vended::credential_of(&config) else {
            return Ok(());
        };
        let mut props: HashMap<String, String> = base.as_ref().clone();
        for key in [
            "s3.endpoint",
            "s3.region",
            "s3.path-style-access",
            "client.region",
        ] {
            if let Some(v) = config.get(key).or_else(|| loaded.config.get(key)) {
                let key = if key == "client.region" {
                    "s3.region"
                } else {
                    key
                };
                props.insert(key.to_string(), v.clone());
            }
        }
        registry
            .register(&prefix, credential, &props, (self, ident))
            .map_err(Error::from)
    }

    /// The vended credentials kept for `location` and its storage properties.
    pub(crate) fn vended_for(
        &self,
        location: &str,
    ) -> Option<(
        iceberg_storage_opendal::AwsCredential,
        HashMap<String, String>,
    )> {
        self.vended.as_ref()?.registry.current(location)
    }

    /// Loads the table again for the credentials vended for `location` (their renewal).
    pub(crate) async fn vended_credential(
        &self,
        ident: &TableIdent,
        location: &str,
    ) -> Result<Option<iceberg_storage_opendal::AwsCredential>> {
        let context = format!("renewing the storage credentials of {ident}");
        let body = self
            .call(
                Method::GET,
                &format!("{}?snapshots=refs", self.table_path(ident)),
                None,
                &context,
            )
            .await?;
        let loaded: LoadTableResponse = self.parse(&body, &context)?;
        Ok(loaded
            .credential_for(location)
            .and_then(|(_, config)| super::vended::credential_of(&config)))
    }

    /// Creates the table (`POST …/namespaces/{ns}/tables`); the server picks its location.
    pub(crate) async fn create_table(
        &self,
        ident: &TableIdent,
        def: &TableDefinition,
        mut properties: HashMap<String, String>,
    ) -> Result<(String, TableMetadata)> {
        self.create_namespace(ident.namespace()).await?;
        properties.insert(
            "format-version".into(),
            (def.format_version as u8).to_string(),
        );
        let mut body = json!({
            "name": ident.name(),
            "schema": def.schema,
            "partition-spec": def.partition_spec,
            "stage-create": false,
            "properties": properties,
        });
        // Java's parser wants the ids an unbound spec leaves out (PyIceberg sends them too).
        let spec = &mut body["partition-spec"];
        if spec.get("spec-id").is_none_or(Value::is_null) {
            spec["spec-id"] = json!(0);
        }
        if let Some(Value::Array(fields)) = spec.get_mut("fields") {
            let mut next = 1000;
            for f in fields {
                match f.get("field-id").and_then(Value::as_i64) {
                    Some(id) => next = next.max(id + 1),
                    None => {
                        f["field-id"] = json!(next);
                        next += 1;
                    }
                }
            }
        }
        if let Some(order) = &def.sort_order {
            body["write-order"] = serde_json::to_value(order).expect("sort order serializes");
        }
        let context = format!("creating table {ident}");
        let reply = match self
            .call(
                Method::POST,
                &format!("{}/tables", self.namespace_path(ident.namespace())),
                Some(&body),
                &context,
            )
            .await
        {
            Err(Error::Rest {
                failure: RestFailure::Conflict,
                ..
            }) => return Err(Error::TableExists(ident.to_string())),
            other => other?,
        };
        self.loaded(ident, &reply, &context)
    }

    /// Drops the table; with `purge` the server deletes its files.
    pub(crate) async fn drop_table(&self, ident: &TableIdent, purge: bool) -> Result<()> {
        let context = format!("dropping table {ident}");
        match self
            .call(
                Method::DELETE,
                &format!("{}?purgeRequested={purge}", self.table_path(ident)),
                None,
                &context,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Rest {
                failure: RestFailure::NotFound,
                ..
            }) => Err(Error::NoSuchTable(ident.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Sends `updates` built on `base` as one commit (`POST …/tables/{t}`), guarded by the
    /// requirements they imply ([`requirements`]). 409 → `Lost`; a failure that may follow
    /// an applied commit (5xx, no reply) → `Unknown`; a refusal (4xx) → `Err`.
    pub(crate) async fn commit(
        &self,
        ident: &TableIdent,
        base: &TableMetadata,
        updates: &[TableUpdate],
    ) -> Result<Outcome> {
        let body = json!({
            "identifier": {"namespace": ident.namespace().as_ref(), "name": ident.name()},
            "requirements": requirements(base, updates),
            "updates": updates,
        });
        let context = format!("committing to {ident}");
        crate::fail::point("before-rest-commit");
        let reply = self
            .call(Method::POST, &self.table_path(ident), Some(&body), &context)
            .await;
        crate::fail::point("after-rest-commit");
        match reply {
            Ok(bytes) => {
                let done: LoadTableResponse = match self.parse(&bytes, &context) {
                    Ok(d) => d,
                    // A 2xx whose body is unreadable: applied, but what it became is not
                    // known from here.
                    Err(e) => return Ok(Outcome::Unknown(e)),
                };
                match done.metadata_location {
                    Some(location) => Ok(Outcome::Landed {
                        location,
                        metadata: Box::new(done.metadata),
                    }),
                    None => Ok(Outcome::Unknown(rest_error(
                        &self.label,
                        &context,
                        RestFailure::BadRequest,
                        None,
                        "the response has no metadata-location".into(),
                    ))),
                }
            }
            Err(Error::Rest {
                failure: RestFailure::Conflict | RestFailure::NotSent | RestFailure::RateLimited,
                ..
            }) => Ok(Outcome::Lost),
            Err(Error::Rest {
                failure: RestFailure::NotFound,
                ..
            }) => Err(Error::NoSuchTable(ident.to_string())),
            Err(e @ Error::Rest { failure, .. }) if failure.commit_may_have_landed() => {
                Ok(Outcome::Unknown(e))
            }
            Err(e) => Err(e),
        }
    }
}

/// The requirements that make a commit of `updates` on `base` a compare-and-swap, as Iceberg
/// Java's `UpdateRequirements.forUpdateTable` derives them, plus `main` always: the table is
/// the same table, and every ref the commit sets (and `main`, which every floe commit reads
/// its state from) still points where it did; a new schema or spec was built on the current
/// last ids, a default changed from the current one.
pub(crate) fn requirements(base: &TableMetadata, updates: &[TableUpdate]) -> Vec<TableRequirement> {
    let mut out = vec![TableRequirement::UuidMatch { uuid: base.uuid() }];
    let mut refs: BTreeSet<String> = BTreeSet::new();
    let mut assert_ref = |name: &str, out: &mut Vec<TableRequirement>| {
        if refs.insert(name.to_string()) {
            out.push(TableRequirement::RefSnapshotIdMatch {
                r#ref: name.to_string(),
                snapshot_id: base.snapshot_for_ref(name).map(|r| r.snapshot_id()),
            });
        }
    };
    assert_ref(iceberg::spec::MAIN_BRANCH, &mut out);
    let mut once: BTreeSet<&'static str> = BTreeSet::new();
    for u in updates {
        let req = match u {
            TableUpdate::SetSnapshotRef { ref_name, .. } => {
                assert_ref(ref_name.as_str(), &mut out);
                None
            }
            TableUpdate::AddSchema { .. } => Some((
                "field-id",
                TableRequirement::LastAssignedFieldIdMatch {
                    last_assigned_field_id: base.last_column_id(),
                },
            )),
            TableUpdate::SetCurrentSchema { .. } | TableUpdate::RemoveSchemas { .. } => Some((
                "schema",
                TableRequirement::CurrentSchemaIdMatch {
                    current_schema_id: base.current_schema_id(),
                },
            )),
            TableUpdate::AddSpec { .. } => Some((
                "partition-id",
                TableRequirement::LastAssignedPartitionIdMatch {
                    last_assigned_partition_id: base.last_partition_id(),
                },
            )),
            TableUpdate::SetDefaultSpec { .. } | TableUpdate::RemovePartitionSpecs { .. } => {
                Some((
                    "spec",
                    TableRequirement::DefaultSpecIdMatch {
                        default_spec_id: base.default_partition_spec_id(),
                    },
                ))
            }
            TableUpdate::SetDefaultSortOrder { .. } => Some((
                "sort-order",
                TableRequirement::DefaultSortOrderIdMatch {
                    default_sort_order_id: base.default_sort_order_id(),
                },
            )),
            _ => None,
        };
        if let Some((key, r)) = req
            && once.insert(key)
        {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{
        MAIN_BRANCH, NestedField, Operation, PrimitiveType, Schema, Snapshot, Summary, Type,
    };

    fn table() -> TableMetadata {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        let creation = iceberg::TableCreation::builder()
            .name("t".into())
            .location("file:///w/t".into())
            .schema(schema)
            .build();
        iceberg::spec::TableMetadataBuilder::from_table_creation(creation)
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    fn append(base: &TableMetadata, id: i64) -> iceberg::spec::TableMetadataBuildResult {
        let snapshot = Snapshot::builder()
            .with_snapshot_id(id)
            .with_parent_snapshot_id(base.current_snapshot_id())
            .with_sequence_number(base.next_sequence_number())
            .with_timestamp_ms(base.last_updated_ms() + 1)
            .with_manifest_list(format!("file:///w/t/metadata/snap-{id}.avro"))
            .with_summary(Summary {
                operation: Operation::Append,
                additional_properties: HashMap::new(),
            })
            .with_schema_id(base.current_schema_id())
            .build();
        let mut props = HashMap::new();
        props.insert("floe.offsets.g".to_string(), format!("{id}"));
        base.clone()
            .into_builder(None)
            .set_branch_snapshot(snapshot, MAIN_BRANCH)
            .unwrap()
            .set_properties(props)
            .unwrap()
            .build()
            .unwrap()
    }

    fn holds(reqs: &[TableRequirement], m: &TableMetadata) -> bool {
        reqs.iter().all(|r| r.check(Some(m)).is_ok())
    }

    #[test]
    fn a_commit_requires_the_main_it_was_built_on() {
        let empty = table();
        let first = append(&empty, 1);
        let reqs = requirements(&empty, &first.changes);
        assert!(
            reqs.contains(&TableRequirement::RefSnapshotIdMatch {
                r#ref: MAIN_BRANCH.into(),
                snapshot_id: None
            }),
            "{reqs:?}"
        );
        assert!(reqs.contains(&TableRequirement::UuidMatch { uuid: empty.uuid() }));
        assert!(holds(&reqs, &empty));
        // Another writer committed first: the same commit must be refused.
        let other = append(&empty, 2).metadata;
        assert!(!holds(&reqs, &other));

        // A commit of properties alone still asserts main: a state commit on a stale base
        // is refused too.
        let base = first.metadata;
        let state = base
            .clone()
            .into_builder(None)
            .set_properties(HashMap::from([("floe.offsets.g".into(), "x".into())]))
            .unwrap()
            .build()
            .unwrap();
        let reqs = requirements(&base, &state.changes);
        assert!(holds(&reqs, &base));
        assert!(!holds(&reqs, &append(&base, 3).metadata));
    }

    #[test]
    fn a_schema_change_requires_the_schema_it_was_built_on() {
        let base = table();
        let schema = Schema::builder()
            .with_schema_id(1)
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "x", Type::Primitive(PrimitiveType::String)).into(),
            ])
            .build()
            .unwrap();
        let evolved = base
            .clone()
            .into_builder(None)
            .add_current_schema(schema.clone())
            .unwrap()
            .build()
            .unwrap();
        let reqs = requirements(&base, &evolved.changes);
        assert!(reqs.contains(&TableRequirement::LastAssignedFieldIdMatch {
            last_assigned_field_id: 1
        }));
        assert!(reqs.contains(&TableRequirement::CurrentSchemaIdMatch {
            current_schema_id: 0
        }));
        assert!(holds(&reqs, &base));
        assert!(!holds(&reqs, &evolved.metadata));
        // Serialized with the REST spec's names.
        let json = serde_json::to_value(&reqs).unwrap();
        let kinds: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"assert-ref-snapshot-id"), "{kinds:?}");
        assert!(
            kinds.contains(&"assert-last-assigned-field-id"),
            "{kinds:?}"
        );
    }

    #[test]
    fn statuses_say_what_a_failure_means() {
        assert_eq!(RestFailure::of(StatusCode::CONFLICT), RestFailure::Conflict);
        assert_eq!(
            RestFailure::of(StatusCode::BAD_GATEWAY),
            RestFailure::ServerError
        );
        assert_eq!(
            RestFailure::of(StatusCode::SERVICE_UNAVAILABLE),
            RestFailure::Unavailable
        );
        assert_eq!(
            RestFailure::of(StatusCode::FORBIDDEN),
            RestFailure::Unauthorized
        );
        assert_eq!(
            RestFailure::of(StatusCode::UNPROCESSABLE_ENTITY),
            RestFailure::BadRequest
        );
        for f in [
            RestFailure::ServerError,
            RestFailure::Unavailable,
            RestFailure::NoReply,
        ] {
            assert!(f.commit_may_have_landed() && f.is_transient(), "{f:?}");
        }
        for f in [
            RestFailure::Conflict,
            RestFailure::RateLimited,
            RestFailure::NotSent,
        ] {
            assert!(!f.commit_may_have_landed() && f.is_transient(), "{f:?}");
        }
        assert!(!RestFailure::Unauthorized.is_transient());
        let detail = error_detail(
            StatusCode::CONFLICT,
            br#"{"error": {"message": "Requirement failed: branch main has changed", "type": "CommitFailedException", "code": 409}}"#,
        );
        assert_eq!(
            detail,
            "HTTP 409 Conflict: CommitFailedException: Requirement failed: branch main has changed"
        );
        let detail = error_detail(
            StatusCode::UNAUTHORIZED,
            br#"{"error": "invalid_client", "error_description": "bad secret token=abc"}"#,
        );
        assert_eq!(
            detail,
            "HTTP 401 Unauthorized: invalid_client bad secret token=***"
        );
    }
}
