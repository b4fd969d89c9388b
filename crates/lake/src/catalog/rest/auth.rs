//! How floe proves who it is to a REST catalog: a static bearer token, OAuth2 client
//! credentials (exchanged at the token endpoint, refreshed at 80 % of their lifetime and once
//! on a 401), and AWS SigV4 signing on top of either. Secrets never reach logs or messages.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::READ_TRIES;
use super::failure::{RestFailure, error_detail, rest_error, transport_detail, transport_failure};
use crate::catalog::redact_uri;
use crate::config::CatalogConfig;
use crate::{Error, Result};

/// How floe proves who it is to the catalog.
pub(super) enum Auth {
    None,
    Token(String),
    OAuth2(OAuth2),
}

impl Auth {
    /// The auth `[catalog]` configures: a static `token`, or OAuth2 client `credential`s
    /// exchanged at `oauth2_server_uri` (else the catalog's own `{root}/v1/oauth/tokens`);
    /// both is an error, neither is no auth.
    pub(super) fn of(cfg: &CatalogConfig, root: &str) -> Result<Self> {
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
        Ok(auth)
    }
}

/// OAuth2 client credentials and the token they were last exchanged for.
pub(super) struct OAuth2 {
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
    pub(super) async fn token(&self, http: &reqwest::Client, label: &str) -> Result<String> {
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
    pub(super) async fn forget(&self, rejected: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == rejected) {
            *cached = None;
        }
    }

    /// Exchanges the client credentials for a token at the token endpoint, retried like an
    /// idempotent read.
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

/// AWS SigV4 signing with credentials from the AWS default chain, as Iceberg Java's
/// `RESTSigV4AuthSession` signs: the body's SHA-256 in `x-amz-content-sha256`, and a bearer
/// token, if any, moved to `Original-Authorization`.
pub(super) struct SigV4 {
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
    /// A signer for `cfg`'s service (`execute-api` when not set) and region (else
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`), with `http` for the credential sources that
    /// call out.
    pub(super) fn new(cfg: &crate::config::SigV4Config, http: &reqwest::Client) -> Result<Self> {
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
    pub(super) async fn sign(&self, req: &mut reqwest::Request) -> std::result::Result<(), String> {
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
