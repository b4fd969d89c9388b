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
//!
//! Files: `config` connects (the client, `/v1/config`); `auth` holds the token, OAuth2 and
//! SigV4; `failure` tells what a failed request means; `wire` holds the JSON replies;
//! `requirements` the commit's compare-and-swap requirements. This file holds the client's
//! requests and the commit.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use iceberg::spec::TableMetadata;
use iceberg::{NamespaceIdent, TableIdent, TableUpdate};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::Outcome;
use crate::{Error, Result};
use auth::{Auth, SigV4};
use failure::{error_detail, rest_error, transport_detail, transport_failure};
use floe_schema::TableDefinition;
use requirements::requirements;
use wire::{ListNamespacesResponse, ListTablesResponse, LoadTableResponse};

mod auth;
mod config;
mod failure;
mod requirements;
mod wire;

pub use failure::RestFailure;

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How often an idempotent request is tried when the server is busy or unreachable.
const READ_TRIES: u32 = 4;

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

impl RestCatalog {
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
    /// requirements they imply ([`requirements()`]). 409 → `Lost`; a failure that may follow
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
