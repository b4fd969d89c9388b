//! The SQL catalog: Iceberg tables registered in a database with the schema of Iceberg Java's
//! `JdbcCatalog` (tables `iceberg_tables`, `iceberg_namespace_properties`), which PyIceberg's
//! `SqlCatalog` and Trino's `iceberg.catalog.type=jdbc` read too.
//!
//! floe owns this layer (rather than iceberg-catalog-sql) because it owns the commit: a commit
//! is a compare-and-swap of `metadata_location` ([`SqlCatalog::swap_metadata_location`]).
//! SQLite runs in WAL mode with a busy timeout so several processes can share one catalog file.

use std::collections::HashMap;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use iceberg::{MetadataLocation, NamespaceIdent, TableCreation, TableIdent};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Connection, Executor, Row};

use super::{absolute, redact_uri};
use crate::config::CatalogConfig;
use crate::{Error, Result};
use floe_schema::TableDefinition;

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

/// A connected SQL catalog.
pub(crate) struct SqlCatalog {
    name: String,
    /// The warehouse root URI (`file:///…` or `s3://…`).
    pub(crate) warehouse: String,
    pool: AnyPool,
    dialect: Dialect,
    file_io: FileIO,
    /// Java's V1 schema has `iceberg_type`; catalogs created by older tools may lack it.
    has_type_column: bool,
}

impl SqlCatalog {
    /// Connects to the catalog database (creating the catalog tables and, for SQLite, the
    /// database file if needed); `warehouse` and `file_io` are the warehouse root and its I/O.
    pub(crate) async fn connect(
        cfg: &CatalogConfig,
        warehouse: String,
        file_io: FileIO,
    ) -> Result<Self> {
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
                "catalog.uri {:?}: expected sqlite://PATH, postgres://USER:PASSWORD@HOST/DB or the https:// URI of an Iceberg REST catalog",
                redact_uri(&cfg.uri)
            )));
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
            name: cfg.name.clone(),
            warehouse,
            pool,
            dialect,
            file_io,
            has_type_column,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// SQL with `?` placeholders in this database's dialect.
    fn sql(&self, q: &str) -> String {
        match self.dialect {
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
        if self.has_type_column {
            " AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)"
        } else {
            ""
        }
    }

    /// Creates the namespace if it does not exist (Java's `exists` marker row).
    pub(crate) async fn create_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        let ns = namespace.join(".");
        let exists = sqlx::query(&self.sql(
            "SELECT 1 FROM iceberg_namespace_properties WHERE catalog_name = ? AND namespace = ?",
        ))
        .bind(self.name().to_string())
        .bind(ns.clone())
        .fetch_optional(&self.pool)
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
        .execute(&self.pool)
        .await;
        match insert {
            Ok(_) => Ok(()),
            // Another process created it meanwhile.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(()),
            Err(e) => Err(Error::catalog(format!("creating namespace {ns}"))(e)),
        }
    }

    /// Every table of this catalog, sorted by name.
    pub(crate) async fn list_tables(&self) -> Result<Vec<TableIdent>> {
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT table_namespace, table_name FROM iceberg_tables WHERE catalog_name = ?{} \
             ORDER BY table_namespace, table_name",
            self.table_filter()
        )))
        .bind(self.name().to_string())
        .fetch_all(&self.pool)
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
    pub(crate) async fn find_metadata_location(
        &self,
        ident: &TableIdent,
    ) -> Result<Option<String>> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?{}",
            self.table_filter()
        )))
        .bind(self.name().to_string())
        .bind(ident.namespace().join("."))
        .bind(ident.name().to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::catalog(format!("looking up table {ident}")))?;
        row.map(|r| r.try_get::<String, _>(0))
            .transpose()
            .map_err(Error::catalog(format!(
                "reading metadata location of {ident}"
            )))
    }

    /// The table's current metadata location and metadata.
    pub(crate) async fn load_metadata(
        &self,
        ident: &TableIdent,
    ) -> Result<(String, TableMetadata)> {
        let location = self
            .find_metadata_location(ident)
            .await?
            .ok_or_else(|| Error::NoSuchTable(ident.to_string()))?;
        let metadata = TableMetadata::read_from(&self.file_io, &location).await?;
        Ok((location, metadata))
    }

    /// Creates a table from its definition (and its namespace if needed), with `properties`;
    /// returns its metadata location and metadata.
    pub(crate) async fn create_table(
        &self,
        ident: &TableIdent,
        def: &TableDefinition,
        properties: HashMap<String, String>,
    ) -> Result<(String, TableMetadata)> {
        if self.find_metadata_location(ident).await?.is_some() {
            return Err(Error::TableExists(ident.to_string()));
        }
        self.create_namespace(ident.namespace()).await?;
        let location = format!(
            "{}/{}/{}",
            self.warehouse,
            def.namespace.join("/"),
            def.name
        );
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
        metadata.write_to(&self.file_io, &metadata_location).await?;
        let metadata_location = metadata_location.to_string();
        let (cols, vals) = if self.has_type_column {
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
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok((metadata_location, metadata)),
            Err(e) => {
                let _ = self.file_io.delete(&metadata_location).await;
                match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => {
                        Err(Error::TableExists(ident.to_string()))
                    }
                    e => Err(Error::catalog(format!("registering table {ident}"))(e)),
                }
            }
        }
    }

    /// Compare-and-swap of the table's metadata location: `Ok(true)` when this call moved it
    /// from `expected` to `new`, `Ok(false)` when another writer had moved it first.
    pub(crate) async fn swap_metadata_location(
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
        .execute(&self.pool)
        .await
        .map_err(Error::catalog(format!("committing to {ident}")))?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the table from the catalog; with `purge`, deletes its files too.
    pub(crate) async fn drop_table(&self, ident: &TableIdent, purge: bool) -> Result<()> {
        let (_, metadata) = self.load_metadata(ident).await?;
        sqlx::query(&self.sql(
            "DELETE FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
        ))
        .bind(self.name().to_string())
        .bind(ident.namespace().join("."))
        .bind(ident.name().to_string())
        .execute(&self.pool)
        .await
        .map_err(Error::catalog(format!("dropping {ident}")))?;
        if purge {
            self.file_io.delete_prefix(metadata.location()).await?;
        }
        Ok(())
    }
}
