//! floe's one catalog model: tables registered in a SQL catalog (SQLite, PostgreSQL, with
//! Iceberg Java's `JdbcCatalog` schema) or an Iceberg REST catalog, chosen by `catalog.uri`.
//!
//! Every command goes through [`Catalog`]; only the commit differs underneath
//! (`crate::commit::publish`): on a SQL catalog floe writes the metadata file and swaps the
//! table's metadata location itself, on REST it sends the changes with their requirements
//! (`POST …/tables/{t}`) and the server writes the metadata file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::{FileIO, FileIOBuilder, LocalFsStorageFactory};
use iceberg::spec::{TableMetadata, TableMetadataBuildResult};
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableIdent};

use crate::config::{CatalogConfig, S3Config, is_s3};
use crate::{Error, Result};
use floe_schema::TableDefinition;
use iceberg_storage_opendal::OpenDalStorageFactory;

pub(crate) mod rest;
mod sql;
mod vended;

pub use rest::RestFailure;

/// A connected catalog plus the file I/O for its tables.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    file_io: FileIO,
    s3: S3Config,
    backend: Backend,
}

enum Backend {
    Sql(sql::SqlCatalog),
    Rest(Box<rest::RestCatalog>),
}

/// What became of a commit sent to the catalog.
pub(crate) enum Outcome {
    /// The table now has the new metadata.
    Landed {
        /// Its metadata file.
        location: String,
        /// The metadata (the server's, on REST).
        metadata: Box<TableMetadata>,
    },
    /// Another writer changed the table first (or the catalog refused the attempt before
    /// applying it): nothing of it is the table's.
    Lost,
    /// The request was sent but its outcome could not be learned.
    Unknown(Error),
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("name", &self.inner.name)
            .field("warehouse", &self.warehouse())
            .finish()
    }
}

/// Parses `a.b.table` into a table identifier.
pub fn parse_table_ident(name: &str) -> Result<TableIdent> {
    let (ns, table) = floe_schema::table_def::split_table_name(name).map_err(Error::Config)?;
    Ok(TableIdent::new(NamespaceIdent::from_vec(ns)?, table))
}

/// Absolute local path for `p`, relative to the working directory.
fn absolute(p: &str) -> Result<PathBuf> {
    std::path::absolute(Path::new(p)).map_err(|source| Error::Io {
        context: format!("resolving path {p}"),
        source,
    })
}

/// The warehouse root URI of a SQL catalog and the file I/O for it.
fn sql_warehouse(cfg: &CatalogConfig, s3: &S3Config) -> Result<(String, FileIO)> {
    let (warehouse, file_io) = if is_s3(&cfg.warehouse) {
        let rest = cfg
            .warehouse
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or("");
        if rest.split('/').next().unwrap_or("").is_empty() {
            return Err(Error::Config(format!(
                "catalog.warehouse {}: expected s3://BUCKET or s3://BUCKET/PREFIX",
                cfg.warehouse
            )));
        }
        let file_io = FileIOBuilder::new(Arc::new(OpenDalStorageFactory::S3 {
            customized_credential_load: None,
        }))
        .with_props(s3.file_io_props()?)
        .build();
        // One scheme for every path floe writes: s3:// (s3a/s3n name the same objects).
        let warehouse = format!("s3://{}", rest.trim_end_matches('/'));
        (warehouse, file_io)
    } else if cfg.warehouse.contains("://") {
        if !cfg.warehouse.starts_with("file://") {
            return Err(Error::Config(format!(
                "catalog.warehouse {}: expected a folder, file:///PATH or s3://BUCKET/PREFIX",
                cfg.warehouse
            )));
        }
        let w = cfg.warehouse.trim_end_matches('/').to_string();
        (
            w,
            FileIOBuilder::new(Arc::new(LocalFsStorageFactory)).build(),
        )
    } else {
        let abs = absolute(&cfg.warehouse)?;
        std::fs::create_dir_all(&abs).map_err(|source| Error::Io {
            context: format!("creating warehouse {}", abs.display()),
            source,
        })?;
        let w = format!("file://{}", abs.display())
            .trim_end_matches('/')
            .to_string();
        (
            w,
            FileIOBuilder::new(Arc::new(LocalFsStorageFactory)).build(),
        )
    };

    Ok((warehouse, file_io))
}

impl Catalog {
    /// Connects to the catalog (a SQL database, created if needed, or a REST service) and sets
    /// up file I/O for its tables.
    pub async fn connect(cfg: &CatalogConfig) -> Result<Self> {
        Self::connect_with(cfg, &S3Config::default()).await
    }

    /// [`Self::connect`] with the S3 settings an `s3://` warehouse needs.
    pub async fn connect_with(cfg: &CatalogConfig, s3: &S3Config) -> Result<Self> {
        let (backend, file_io) = if cfg.is_rest() {
            let (rest, file_io) = rest::RestCatalog::connect(cfg, s3).await?;
            (Backend::Rest(Box::new(rest)), file_io)
        } else {
            let keys = cfg.rest_only_keys();
            if !keys.is_empty() {
                return Err(Error::Config(format!(
                    "catalog.{} applies to an Iceberg REST catalog (catalog.uri = https://…), not to {}: remove it or point catalog.uri at the REST catalog",
                    keys.join(", catalog."),
                    redact_uri(&cfg.uri)
                )));
            }
            let (warehouse, file_io) = sql_warehouse(cfg, s3)?;
            let sql = sql::SqlCatalog::connect(cfg, warehouse, file_io.clone()).await?;
            (Backend::Sql(sql), file_io)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                name: cfg.name.clone(),
                file_io,
                s3: s3.clone(),
                backend,
            }),
        })
    }

    /// The catalog name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// SQL catalogs: the warehouse root URI (`file:///…` or `s3://…`). REST: the catalog's
    /// URI and warehouse identifier, for messages.
    pub fn warehouse(&self) -> &str {
        match &self.inner.backend {
            Backend::Sql(s) => &s.warehouse,
            Backend::Rest(r) => r.label(),
        }
    }

    /// Whether this is an Iceberg REST catalog.
    pub fn is_rest(&self) -> bool {
        matches!(self.inner.backend, Backend::Rest(_))
    }

    /// The S3 settings (for listing an `s3://` warehouse).
    pub fn s3(&self) -> &S3Config {
        &self.inner.s3
    }

    /// The S3 settings and session token to list `location` (a table's) with another S3
    /// client: `[s3]`'s, or with vended credentials the ones the catalog gave for it.
    pub fn s3_for(&self, location: &str) -> (S3Config, Option<String>) {
        if let Backend::Rest(r) = &self.inner.backend
            && let Some((credential, props)) = r.vended_for(location)
        {
            let mut s3 = self.inner.s3.clone();
            s3.access_key_id = Some(credential.access_key_id);
            s3.secret_access_key = Some(credential.secret_access_key);
            s3.secret_access_key_file = None;
            if let Some(e) = props.get("s3.endpoint") {
                s3.endpoint = Some(e.clone());
            }
            if let Some(r) = props.get("s3.region") {
                s3.region = Some(r.clone());
            }
            if let Some(p) = props.get("s3.path-style-access") {
                s3.path_style = p.eq_ignore_ascii_case("true");
            }
            return (s3, credential.session_token);
        }
        (self.inner.s3.clone(), None)
    }

    /// File I/O for table data and metadata.
    pub fn file_io(&self) -> &FileIO {
        &self.inner.file_io
    }

    /// Creates the namespace (and its parents) if it does not exist.
    pub async fn create_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        match &self.inner.backend {
            Backend::Sql(s) => s.create_namespace(namespace).await,
            Backend::Rest(r) => r.create_namespace(namespace).await,
        }
    }

    /// Every table of this catalog, sorted by name.
    pub async fn list_tables(&self) -> Result<Vec<TableIdent>> {
        let mut tables = match &self.inner.backend {
            Backend::Sql(s) => s.list_tables().await?,
            Backend::Rest(r) => r.list_tables().await?,
        };
        tables.sort_by(|a, b| {
            (a.namespace().as_ref(), a.name()).cmp(&(b.namespace().as_ref(), b.name()))
        });
        Ok(tables)
    }

    /// The table's current metadata location, or `None` if the table does not exist.
    pub async fn find_metadata_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        match &self.inner.backend {
            Backend::Sql(s) => s.find_metadata_location(ident).await,
            Backend::Rest(r) => match r.load_table(ident).await {
                Ok((location, _)) => Ok(Some(location)),
                Err(Error::NoSuchTable(_)) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// The table's current metadata location and metadata.
    pub async fn load_metadata(&self, ident: &TableIdent) -> Result<(String, TableMetadata)> {
        match &self.inner.backend {
            Backend::Sql(s) => s.load_metadata(ident).await,
            Backend::Rest(r) => r.load_table(ident).await,
        }
    }

    /// Loads a table (for scans and manifest reads).
    pub async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        let (location, metadata) = self.load_metadata(ident).await?;
        self.table_from(ident, location, metadata)
    }

    pub(crate) fn table_from(
        &self,
        ident: &TableIdent,
        location: String,
        metadata: TableMetadata,
    ) -> Result<Table> {
        Ok(Table::builder()
            .file_io(self.file_io().clone())
            .identifier(ident.clone())
            .metadata_location(location)
            .metadata(metadata)
            .runtime(iceberg::Runtime::current())
            .build()?)
    }

    /// Creates a table from its definition (and its namespace if needed).
    pub async fn create_table(&self, def: &TableDefinition) -> Result<Table> {
        let ident = TableIdent::new(
            NamespaceIdent::from_vec(def.namespace.clone())?,
            def.name.clone(),
        );
        crate::compat::check_definition(
            &ident.to_string(),
            def.format_version,
            &def.schema,
            &def.properties,
        )?;
        let mut properties = def.properties.clone();
        for (k, v) in crate::commit::CREATE_DEFAULTS {
            properties
                .entry(k.to_string())
                .or_insert_with(|| v.to_string());
        }
        let (location, metadata) = match &self.inner.backend {
            Backend::Sql(s) => s.create_table(&ident, def, properties).await?,
            Backend::Rest(r) => r.create_table(&ident, def, properties).await?,
        };
        self.table_from(&ident, location, metadata)
    }

    /// Creates the table unless it exists; returns the table either way.
    pub async fn create_table_if_missing(&self, def: &TableDefinition) -> Result<(Table, bool)> {
        let ident = TableIdent::new(
            NamespaceIdent::from_vec(def.namespace.clone())?,
            def.name.clone(),
        );
        match self.create_table(def).await {
            Ok(t) => Ok((t, true)),
            Err(Error::TableExists(_)) => Ok((self.load_table(&ident).await?, false)),
            Err(e) => Err(e),
        }
    }

    /// SQL catalogs only: compare-and-swap of the table's metadata location. `Ok(true)` when
    /// this call moved it from `expected` to `new`, `Ok(false)` when another writer had moved
    /// it first. (Tests use it to play another engine.)
    pub async fn swap_metadata_location(
        &self,
        ident: &TableIdent,
        expected: &str,
        new: &str,
    ) -> Result<bool> {
        match &self.inner.backend {
            Backend::Sql(s) => s.swap_metadata_location(ident, expected, new).await,
            Backend::Rest(_) => Err(Error::Unsupported(
                "a REST catalog takes commits, not metadata locations".into(),
            )),
        }
    }

    /// Whether floe writes the table's metadata files itself (SQL catalogs; a REST server
    /// writes them).
    pub(crate) fn writes_metadata_files(&self) -> bool {
        matches!(self.inner.backend, Backend::Sql(_))
    }

    /// Whether a commit that only records floe's state must add a snapshot: REST requirements
    /// guard refs and ids but no property, so only a moved `main` makes the commit a
    /// compare-and-swap (see [`crate::commit`]).
    pub(crate) fn state_needs_snapshot(&self) -> bool {
        self.is_rest()
    }

    /// Sends `built` (derived from `base`, read at `base_location`) to the REST catalog as
    /// its changes and requirements.
    pub(crate) async fn post_commit(
        &self,
        ident: &TableIdent,
        base: &TableMetadata,
        built: &TableMetadataBuildResult,
    ) -> Result<Outcome> {
        match &self.inner.backend {
            Backend::Rest(r) => r.commit(ident, base, &built.changes).await,
            Backend::Sql(_) => Err(Error::Unsupported(
                "post_commit is for REST catalogs".into(),
            )),
        }
    }

    /// Removes the table from the catalog; with `purge`, deletes its files too.
    pub async fn drop_table(&self, ident: &TableIdent, purge: bool) -> Result<()> {
        match &self.inner.backend {
            Backend::Sql(s) => s.drop_table(ident, purge).await,
            Backend::Rest(r) => r.drop_table(ident, purge).await,
        }
    }
}

/// A URI with its secrets masked for messages and logs: `postgres://user:secret@host/db` →
/// `postgres://user:***@host/db`, and `?password=…`, `&sslpassword=…`, `token=…` and the like
/// in the query → `***`.
pub fn redact_uri(uri: &str) -> String {
    redact_text(uri)
}

/// `text` with every secret that a URI or a `key=value` pair in it carries masked as `***`:
/// the password of `scheme://user:password@host`, and the value of any `name=value` whose
/// name says password, secret, token or key (so a message quoting a URI or a setting keeps
/// its shape but not its secret).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // scheme://user:password@host
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) if authority[..at].contains(':') => {
                let colon = authority[..at].find(':').expect("checked");
                out.push_str(&authority[..colon + 1]);
                out.push_str(crate::config::REDACTED);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_pairs(&out)
}

/// Masks the value of every `name=value` whose name looks secret.
fn redact_pairs(text: &str) -> String {
    let secret = |name: &str| {
        let n = name.to_ascii_lowercase();
        [
            "authorization",
            "password",
            "passwd",
            "pwd",
            "secret",
            "token",
            "key",
            "credential",
        ]
        .iter()
        .any(|s| n.contains(s))
    };
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, _) in text.match_indices('=') {
        if i < last {
            continue;
        }
        let start = text[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .map(|p| p + 1)
            .unwrap_or(0);
        if start >= i || !secret(&text[start..i]) {
            continue;
        }
        let value_end = text[i + 1..]
            .find(|c: char| {
                c == '&' || c == ';' || c == ',' || c.is_whitespace() || c == '"' || c == '\''
            })
            .map(|p| i + 1 + p)
            .unwrap_or(text.len());
        out.push_str(&text[last..i + 1]);
        out.push_str(crate::config::REDACTED);
        last = value_end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn secrets_in_uris_and_pairs_are_masked() {
        assert_eq!(
            redact_uri("postgres://u:s3cret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_uri("postgres://u@h/db?password=s3cret&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(
            redact_uri("postgresql://h/db?sslmode=require&sslpassword=x&PASSWORD=y"),
            "postgresql://h/db?sslmode=require&sslpassword=***&PASSWORD=***"
        );
        assert_eq!(
            redact_uri("sqlite://floe-data/catalog.db"),
            "sqlite://floe-data/catalog.db"
        );
        let msg = "catalog database: connecting to postgres://a:b@h/d?token=t1: error at x=1";
        assert_eq!(
            redact_text(msg),
            "catalog database: connecting to postgres://a:***@h/d?token=*** error at x=1"
        );
        assert_eq!(
            redact_text("s3.secret-access-key=abc other"),
            "s3.secret-access-key=*** other"
        );
    }
}
