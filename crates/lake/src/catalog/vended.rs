//! Vended storage credentials (`X-Iceberg-Access-Delegation: vended-credentials`): a REST
//! catalog hands out S3 credentials scoped to a table's location with every load-table
//! response. floe keeps one storage per table location, signed with that table's
//! credentials, behind the catalog's one [`FileIO`](iceberg::io::FileIO): every path is
//! routed to the storage of the longest table location that holds it (others, to storage with
//! floe's own `[s3]` settings). A table's credentials are renewed from the catalog when they
//! near their expiry (`s3.session-token-expires-at-ms`).
//!
//! Without vended credentials the same routing serves every REST catalog: `s3://` paths go
//! to S3 with floe's settings, others to iceberg's local file system (not OpenDAL's, whose
//! set-up builds an HTTP client that panics on a machine without CA certificates).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::TableIdent;
use iceberg::io::LocalFsStorageFactory;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg_storage_opendal::{AwsCredential, CustomAwsCredentialLoader, OpenDalStorageFactory};
use serde::{Deserialize, Serialize};

use super::rest::RestCatalog;

/// Credential keys of a load-table `config` (never put into storage properties: the
/// table's credential loader provides them).
const CREDENTIAL_KEYS: [&str; 4] = [
    "s3.access-key-id",
    "s3.secret-access-key",
    "s3.session-token",
    "s3.session-token-expires-at-ms",
];

/// The tables' storages, by location.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Longest prefix first.
    tables: RwLock<Vec<TableStorage>>,
}

/// One table location's storage.
#[derive(Debug)]
struct TableStorage {
    /// The location, with `s3://`.
    prefix: String,
    storage: Arc<dyn Storage>,
    credentials: Arc<VendedCredentials>,
    /// The storage properties (endpoint, region, path style).
    props: HashMap<String, String>,
}

/// `s3a://` and `s3n://` name the same objects as `s3://`.
fn normalized(path: &str) -> String {
    for scheme in ["s3a://", "s3n://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            return format!("s3://{rest}");
        }
    }
    path.to_string()
}

/// The S3 credentials in a load-table `config` (or a storage credential's), if any.
pub(crate) fn credential_of(config: &HashMap<String, String>) -> Option<AwsCredential> {
    let key = config.get("s3.access-key-id")?;
    let secret = config.get("s3.secret-access-key")?;
    let expires_in = config
        .get("s3.session-token-expires-at-ms")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|ms| reqsign_core::time::Timestamp::from_millisecond(ms).ok());
    Some(AwsCredential {
        access_key_id: key.clone(),
        secret_access_key: secret.clone(),
        session_token: config.get("s3.session-token").cloned(),
        expires_in,
    })
}

impl TableStorage {
    fn holds(&self, path: &str) -> bool {
        path.starts_with(self.prefix.as_str())
            && (path.len() == self.prefix.len()
                || self.prefix.ends_with('/')
                || path.as_bytes()[self.prefix.len()] == b'/')
    }
}

impl Registry {
    fn route(&self, path: &str) -> Option<Arc<dyn Storage>> {
        let path = normalized(path);
        let tables = self.tables.read().expect("registry lock");
        tables
            .iter()
            .find(|t| t.holds(&path))
            .map(|t| t.storage.clone())
    }

    /// The newest credentials kept for `path`'s table and its storage properties (for
    /// listing it with another S3 client).
    pub(crate) fn current(&self, path: &str) -> Option<(AwsCredential, HashMap<String, String>)> {
        let path = normalized(path);
        let tables = self.tables.read().expect("registry lock");
        let t = tables.iter().find(|t| t.holds(&path))?;
        let credential = t
            .credentials
            .fresh
            .lock()
            .expect("credentials lock")
            .clone()?;
        Some((credential, t.props.clone()))
    }

    /// Records the credentials a load-table response vended for `location` (a table's, or a
    /// `storage-credentials` prefix). The first time, builds the location's storage from
    /// `props` (floe's S3 settings with the response's endpoint and region); after that the
    /// fresh credentials replace the ones kept for renewal.
    pub(crate) fn register(
        &self,
        location: &str,
        credential: AwsCredential,
        props: &HashMap<String, String>,
        source: (&RestCatalog, &TableIdent),
    ) -> iceberg::Result<()> {
        let prefix = normalized(location.trim_end_matches('/'));
        if !prefix.starts_with("s3://") {
            return Ok(());
        }
        {
            let tables = self.tables.read().expect("registry lock");
            if let Some(t) = tables.iter().find(|t| t.prefix == prefix) {
                *t.credentials.fresh.lock().expect("credentials lock") = Some(credential);
                return Ok(());
            }
        }
        let creds = Arc::new(VendedCredentials {
            fresh: Mutex::new(Some(credential)),
            catalog: source.0.clone(),
            table: source.1.clone(),
            location: prefix.clone(),
        });
        let props: HashMap<String, String> = props
            .iter()
            .filter(|(k, _)| !CREDENTIAL_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let storage = OpenDalStorageFactory::S3 {
            customized_credential_load: Some(CustomAwsCredentialLoader::new(Arc::new(
                CredentialSource(creds.clone()),
            ))),
        }
        .build(&StorageConfig::from_props(props.clone()))?;
        let mut tables = self.tables.write().expect("registry lock");
        if !tables.iter().any(|t| t.prefix == prefix) {
            tables.push(TableStorage {
                prefix,
                storage,
                credentials: creds,
                props,
            });
            tables.sort_by_key(|t| std::cmp::Reverse(t.prefix.len()));
        }
        Ok(())
    }
}

/// One table location's credentials: the newest a load-table response vended, renewed from
/// the catalog when they are used up.
pub(crate) struct VendedCredentials {
    fresh: Mutex<Option<AwsCredential>>,
    catalog: RestCatalog,
    table: TableIdent,
    location: String,
}

impl std::fmt::Debug for VendedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendedCredentials")
            .field("table", &self.table)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The credential loader opendal's S3 signer calls when it has none or they expired.
#[derive(Debug)]
struct CredentialSource(Arc<VendedCredentials>);

impl reqsign_core::ProvideCredential for CredentialSource {
    type Credential = AwsCredential;

    async fn provide_credential(
        &self,
        _: &reqsign_core::Context,
    ) -> reqsign_core::Result<Option<AwsCredential>> {
        use reqsign_core::SigningCredential;
        let v = &self.0;
        let kept = v.fresh.lock().expect("credentials lock").clone();
        if let Some(c) = kept
            && c.is_valid()
        {
            return Ok(Some(c));
        }
        // Renew: load the table again; the response carries new credentials.
        let renewed = v
            .catalog
            .vended_credential(&v.table, &v.location)
            .await
            .map_err(|e| {
                reqsign_core::Error::credential_invalid(format!(
                    "renewing the vended S3 credentials of {}: {e}",
                    v.table
                ))
            })?;
        *v.fresh.lock().expect("credentials lock") = renewed.clone();
        Ok(renewed)
    }
}

/// Builds [`RoutingStorage`]: the catalog's [`FileIO`](iceberg::io::FileIO) with vended
/// credentials.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RoutingFactory {
    #[serde(skip)]
    pub(crate) registry: Arc<Registry>,
}

#[typetag::serde(name = "FloeVendedRoutingStorageFactory")]
impl StorageFactory for RoutingFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(RoutingStorage {
            registry: self.registry.clone(),
            fallback: Some(Fallback {
                s3: OpenDalStorageFactory::S3 {
                    customized_credential_load: None,
                }
                .build(config)?,
                local: LocalFsStorageFactory.build(config)?,
            }),
        }))
    }
}

/// Routes every path to its table's storage (see the module doc).
#[derive(Debug, Default, Serialize, Deserialize)]
struct RoutingStorage {
    #[serde(skip)]
    registry: Arc<Registry>,
    #[serde(skip)]
    fallback: Option<Fallback>,
}

/// Where paths of no vended table go.
#[derive(Debug)]
struct Fallback {
    s3: Arc<dyn Storage>,
    local: Arc<dyn Storage>,
}

impl RoutingStorage {
    fn pick(&self, path: &str) -> iceberg::Result<Arc<dyn Storage>> {
        if let Some(s) = self.registry.route(path) {
            return Ok(s);
        }
        let f = self.fallback.as_ref().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                "routing storage without a fallback",
            )
        })?;
        Ok(if crate::config::is_s3(path) {
            f.s3.clone()
        } else {
            f.local.clone()
        })
    }
}

#[async_trait]
#[typetag::serde(name = "FloeVendedRoutingStorage")]
impl Storage for RoutingStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        self.pick(path)?.exists(path).await
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        self.pick(path)?.metadata(path).await
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        self.pick(path)?.read(path).await
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        self.pick(path)?.reader(path).await
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        self.pick(path)?.write(path, bs).await
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        self.pick(path)?.writer(path).await
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        self.pick(path)?.delete(path).await
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        self.pick(path)?.delete_prefix(path).await
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        // Grouped by the storage each path belongs to, in order of first appearance.
        let paths: Vec<String> = paths.collect().await;
        let mut groups: Vec<(Arc<dyn Storage>, Vec<String>)> = Vec::new();
        for p in paths {
            let s = self.pick(&p)?;
            match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &s)) {
                Some((_, v)) => v.push(p),
                None => groups.push((s, vec![p])),
            }
        }
        for (s, group) in groups {
            s.delete_stream(futures::stream::iter(group).boxed())
                .await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        self.pick(path)?.new_input(path)
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        self.pick(path)?.new_output(path)
    }
}
