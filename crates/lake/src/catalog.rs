//! The SQL catalog: Iceberg tables registered in a database with the schema of Iceberg Java's
//! `JdbcCatalog` (tables `iceberg_tables`, `iceberg_namespace_properties`), which PyIceberg's
//! `SqlCatalog` and Trino's `iceberg.catalog.type=jdbc` read too.
//!
//! floe owns this layer (rather than iceberg-catalog-sql) because it owns the commit: a commit
//! is a compare-and-swap of `metadata_location` ([`Catalog::swap_metadata_location`]). SQLite
//! runs in WAL mode with a busy timeout so several processes can share one catalog file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iceberg::io::{FileIO, FileIOBuilder, LocalFsStorageFactory};
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::{MetadataLocation, NamespaceIdent, TableCreation, TableIdent};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Connection, Executor, Row};

use crate::config::{CatalogConfig, S3Config, is_s3};
use crate::{Error, Result};
use floe_schema::TableDefinition;
use iceberg_storage_opendal::OpenDalStorageFactory;

/// How long a catalog database that is not reachable (refused, timed out) is waited for, and
/// how long a connection from the pool is waited for.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Set on every SQLite connection: wait for a writer's lock instead of failing at once, and
/// let readers go on while one writes.
const SQLITE_PRAGMAS: [&str; 2] = ["PRAGMA busy_timeout = 30000", "PRAGMA journal_mode = WAL"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// A connected catalog plus the file I/O for its warehouse.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    warehouse: String,
    pool: AnyPool,
    dialect: Dialect,
    file_io: FileIO,
    s3: S3Config,
    /// Java's V1 schema has `iceberg_type`; catalogs created by older tools may lack it.
    has_type_column: bool,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("name", &self.inner.name)
            .field("warehouse", &self.inner.warehouse)
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

impl Catalog {
    /// Connects to the catalog database (creating the catalog tables and, for SQLite, the
    /// database file if needed) and sets up file I/O for the warehouse.
    pub async fn connect(cfg: &CatalogConfig) -> Result<Self> {
        Self::connect_with(cfg, &S3Config::default()).await
    }

    /// [`Self::connect`] with the S3 settings an `s3://` warehouse needs.
    pub async fn connect_with(cfg: &CatalogConfig, s3: &S3Config) -> Result<Self> {
        install_default_drivers();
        let (dialect, url) = if let Some((path, query)) = cfg.sqlite_file() {
            if path.is_empty() || path == ":memory:" {
                return Err(Error::Config(format!(
                    "catalog.uri {}: give a database file path (sqlite://floe-data/catalog.db)",
                    cfg.uri
                )));
            }
            let abs = absolute(path)?;
            if let Some(parent) = abs.parent() {
                std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                    context: format!("creating {}", parent.display()),
                    source,
                })?;
            }
            let query = if query.is_empty() { "mode=rwc" } else { query };
            (
                Dialect::Sqlite,
                format!("sqlite://{}?{query}", abs.display()),
            )
        } else if cfg.uri.starts_with("postgres://") || cfg.uri.starts_with("postgresql://") {
            (Dialect::Postgres, cfg.uri.clone())
        } else {
            return Err(Error::Config(format!(
                "catalog.uri {:?}: expected sqlite://PATH or postgres://USER:PASSWORD@HOST/DB",
                redact_uri(&cfg.uri)
            )));
        };
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

        // One connection first, so a database that cannot be opened (a full disk, no
        // permission, a wrong password) says why at once: the pool would retry it for
        // `acquire_timeout` and then report only "pool timed out". A server not up yet
        // (refused, unreachable) is waited for as long as the pool would.
        let started = std::time::Instant::now();
        let opening = || Error::catalog("connecting");
        let mut conn = loop {
            match sqlx::AnyConnection::connect(&url).await {
                Ok(conn) => break conn,
                Err(e @ sqlx::Error::Io(_)) if started.elapsed() < CONNECT_PATIENCE => {
                    tracing::warn!(catalog = %redact_uri(&cfg.uri), error = %e, "catalog database not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(opening()(e)),
            }
        };
        if dialect == Dialect::Sqlite {
            for pragma in SQLITE_PRAGMAS {
                conn.execute(pragma).await.map_err(opening())?;
            }
        }
        let _ = conn.close().await;
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 4 } else { 8 })
            .acquire_timeout(CONNECT_PATIENCE)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            conn.execute(pragma).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(Error::catalog(format!(
                "connecting to {}",
                redact_uri(&cfg.uri)
            )))?;

        for ddl in [
            "CREATE TABLE IF NOT EXISTS iceberg_tables (
                catalog_name VARCHAR(255) NOT NULL,
                table_namespace VARCHAR(255) NOT NULL,
                table_name VARCHAR(255) NOT NULL,
                metadata_location VARCHAR(1000),
                previous_metadata_location VARCHAR(1000),
                iceberg_type VARCHAR(5),
                PRIMARY KEY (catalog_name, table_namespace, table_name))",
            "CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
                catalog_name VARCHAR(255) NOT NULL,
                namespace VARCHAR(255) NOT NULL,
                property_key VARCHAR(255),
                property_value VARCHAR(1000),
                PRIMARY KEY (catalog_name, namespace, property_key))",
        ] {
            pool.execute(ddl)
                .await
                .map_err(Error::catalog("creating catalog tables"))?;
        }
        let has_type_column = pool
            .execute("SELECT iceberg_type FROM iceberg_tables WHERE 1 = 0")
            .await
            .is_ok();

        Ok(Self {
            inner: Arc::new(Inner {
                name: cfg.name.clone(),
                warehouse,
                pool,
                dialect,
                file_io,
                s3: s3.clone(),
                has_type_column,
            }),
        })
    }

    /// The catalog name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The warehouse root URI (`file:///…` or `s3://…`).
    pub fn warehouse(&self) -> &str {
        &self.inner.warehouse
    }

    /// The S3 settings (for listing an `s3://` warehouse).
    pub fn s3(&self) -> &S3Config {
        &self.inner.s3
    }

    /// File I/O for table data and metadata.
    pub fn file_io(&self) -> &FileIO {
        &self.inner.file_io
    }

    /// SQL with `?` placeholders in this database's dialect.
    fn sql(&self, q: &str) -> String {
        match self.inner.dialect {
            Dialect::Sqlite => q.to_string(),
            Dialect::Postgres => {
                let mut out = String::with_capacity(q.len() + 8);
                let mut n = 0;
                for c in q.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    fn table_filter(&self) -> &'static str {
        if self.inner.has_type_column {
            " AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)"
        } else {
            ""
        }
    }

    /// Creates the namespace if it does not exist (Java's `exists` marker row).
    pub async fn create_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        let ns = namespace.join(".");
        let exists = sqlx::query(&self.sql(
            "SELECT 1 FROM iceberg_namespace_properties WHERE catalog_name = ? AND namespace = ?",
        ))
        .bind(self.name().to_string())
        .bind(ns.clone())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(Error::catalog(format!("looking up namespace {ns}")))?;
        if exists.is_some() {
            return Ok(());
        }
        let insert = sqlx::query(&self.sql(
            "INSERT INTO iceberg_namespace_properties \
             (catalog_name, namespace, property_key, property_value) VALUES (?, ?, 'exists', 'true')",
        ))
        .bind(self.name().to_string())
        .bind(ns.clone())
        .execute(&self.inner.pool)
        .await;
        match insert {
            Ok(_) => Ok(()),
            // Another process created it meanwhile.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(()),
            Err(e) => Err(Error::catalog(format!("creating namespace {ns}"))(e)),
        }
    }

    /// Every table of this catalog, sorted by name.
    pub async fn list_tables(&self) -> Result<Vec<TableIdent>> {
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT table_namespace, table_name FROM iceberg_tables WHERE catalog_name = ?{} \
             ORDER BY table_namespace, table_name",
            self.table_filter()
        )))
        .bind(self.name().to_string())
        .fetch_all(&self.inner.pool)
        .await
        .map_err(Error::catalog("listing tables"))?;
        rows.iter()
            .map(|r| {
                let ns: String = r.try_get(0).map_err(Error::catalog("reading table list"))?;
                let name: String = r.try_get(1).map_err(Error::catalog("reading table list"))?;
                Ok(TableIdent::new(
                    NamespaceIdent::from_vec(ns.split('.').map(String::from).collect())?,
                    name,
                ))
            })
            .collect()
    }

    /// The table's current metadata location, or `None` if the table does not exist.
    pub async fn find_metadata_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?{}",
            self.table_filter()
        )))
        .bind(self.name().to_string())
        .bind(ident.namespace().join("."))
        .bind(ident.name().to_string())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(Error::catalog(format!("looking up table {ident}")))?;
        row.map(|r| r.try_get::<String, _>(0))
            .transpose()
            .map_err(Error::catalog(format!(
                "reading metadata location of {ident}"
            )))
    }

    /// The table's current metadata location and metadata.
    pub async fn load_metadata(&self, ident: &TableIdent) -> Result<(String, TableMetadata)> {
        let location = self
            .find_metadata_location(ident)
            .await?
            .ok_or_else(|| Error::NoSuchTable(ident.to_string()))?;
        let metadata = TableMetadata::read_from(self.file_io(), &location).await?;
        Ok((location, metadata))
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
        if self.find_metadata_location(&ident).await?.is_some() {
            return Err(Error::TableExists(ident.to_string()));
        }
        crate::compat::check_definition(
            &ident.to_string(),
            def.format_version,
            &def.schema,
            &def.properties,
        )?;
        self.create_namespace(ident.namespace()).await?;
        let location = format!(
            "{}/{}/{}",
            self.warehouse(),
            def.namespace.join("/"),
            def.name
        );
        let mut properties = def.properties.clone();
        for (k, v) in crate::commit::CREATE_DEFAULTS {
            properties
                .entry(k.to_string())
                .or_insert_with(|| v.to_string());
        }
        let creation = TableCreation::builder()
            .name(def.name.clone())
            .location(location.clone())
            .schema(def.schema.clone())
            .partition_spec(def.partition_spec.clone())
            .sort_order_opt(def.sort_order.clone())
            .properties(properties)
            .format_version(def.format_version)
            .build();
        let metadata = TableMetadataBuilder::from_table_creation(creation)?
            .build()?
            .metadata;
        let metadata_location = MetadataLocation::new_with_metadata(location, &metadata);
        metadata
            .write_to(self.file_io(), &metadata_location)
            .await?;
        let metadata_location = metadata_location.to_string();
        let (cols, vals) = if self.inner.has_type_column {
            (", iceberg_type", ", 'TABLE'")
        } else {
            ("", "")
        };
        let inserted = sqlx::query(&self.sql(&format!(
            "INSERT INTO iceberg_tables \
             (catalog_name, table_namespace, table_name, metadata_location{cols}) \
             VALUES (?, ?, ?, ?{vals})"
        )))
        .bind(self.name().to_string())
        .bind(ident.namespace().join("."))
        .bind(ident.name().to_string())
        .bind(metadata_location.clone())
        .execute(&self.inner.pool)
        .await;
        match inserted {
            Ok(_) => self.table_from(&ident, metadata_location, metadata),
            Err(e) => {
                let _ = self.file_io().delete(&metadata_location).await;
                match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => {
                        Err(Error::TableExists(ident.to_string()))
                    }
                    e => Err(Error::catalog(format!("registering table {ident}"))(e)),
                }
            }
        }
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

    /// Compare-and-swap of the table's metadata location: `Ok(true)` when this call moved it
    /// from `expected` to `new`, `Ok(false)` when another writer had moved it first.
    pub async fn swap_metadata_location(
        &self,
        ident: &TableIdent,
        expected: &str,
        new: &str,
    ) -> Result<bool> {
        let done = sqlx::query(&self.sql(&format!(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
             AND metadata_location = ?{}",
            self.table_filter()
        )))
        .bind(new.to_string())
        .bind(expected.to_string())
        .bind(self.name().to_string())
        .bind(ident.namespace().join("."))
        .bind(ident.name().to_string())
        .bind(expected.to_string())
        .execute(&self.inner.pool)
        .await
        .map_err(Error::catalog(format!("committing to {ident}")))?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the table from the catalog; with `purge`, deletes its files too.
    pub async fn drop_table(&self, ident: &TableIdent, purge: bool) -> Result<()> {
        let (_, metadata) = self.load_metadata(ident).await?;
        sqlx::query(&self.sql(
            "DELETE FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
        ))
        .bind(self.name().to_string())
        .bind(ident.namespace().join("."))
        .bind(ident.name().to_string())
        .execute(&self.inner.pool)
        .await
        .map_err(Error::catalog(format!("dropping {ident}")))?;
        if purge {
            self.file_io().delete_prefix(metadata.location()).await?;
        }
        Ok(())
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
