//! Parquet data files for one table: batches are split by the table's partition spec and
//! written through iceberg-rust's writers (field ids kept, statistics collected, files rolled at
//! `write.target-file-size-bytes`), compressed as the table's `write.parquet.*` properties say
//! (zstd by default).
//!
//! Every path the writer creates is recorded, so [`DataWriter::abort`] can delete exactly the
//! files of a batch whose commit definitely failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, DataFileFormat, PartitionKey, PrimitiveType, SchemaRef, Struct, TableMetadata,
    TableProperties, Type,
};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::partition::PartitionSplitter;
use crate::{Error, Result};

/// A location generator that remembers every path it hands out.
#[derive(Clone)]
struct RecordingLocations {
    inner: DefaultLocationGenerator,
    paths: Arc<Mutex<Vec<String>>>,
}

impl LocationGenerator for RecordingLocations {
    fn generate_location(&self, partition_key: Option<&PartitionKey>, file_name: &str) -> String {
        let path = self.inner.generate_location(partition_key, file_name);
        self.paths.lock().expect("paths lock").push(path.clone());
        path
    }
}

type Builder =
    DataFileWriterBuilder<ParquetWriterBuilder, RecordingLocations, DefaultFileNameGenerator>;
type Writer = DataFileWriter<ParquetWriterBuilder, RecordingLocations, DefaultFileNameGenerator>;

/// Writes record batches of one table's current schema into partitioned Parquet data files.
pub struct DataWriter {
    file_io: FileIO,
    spec_id: i32,
    builder: Builder,
    splitter: Option<PartitionSplitter>,
    writers: HashMap<Struct, Writer>,
    unpartitioned: Option<Writer>,
    paths: Arc<Mutex<Vec<String>>>,
    rows: u64,
}

/// Table property: the Parquet codec of the partial files loaders write to an aggregate table
/// (`zstd`, `snappy`, `gzip` or `uncompressed`, the default); see [`DataWriter::for_partials`].
pub const PARTIALS_CODEC: &str = "floe.partials.compression-codec";

/// Parquet writer settings from the table's properties (zstd level 1 unless set).
pub fn writer_properties(props: &HashMap<String, String>) -> Result<WriterProperties> {
    let codec = props
        .get("write.parquet.compression-codec")
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_else(|| "zstd".into());
    let level: Option<i32> = match props.get("write.parquet.compression-level") {
        Some(l) => Some(l.trim().parse().map_err(|_| {
            Error::Config(format!(
                "table property write.parquet.compression-level = {l:?} is not a number"
            ))
        })?),
        None => None,
    };
    let bad = |e: parquet::errors::ParquetError| {
        Error::Config(format!(
            "table property write.parquet.compression-level: {e}"
        ))
    };
    let compression = match codec.as_str() {
        "zstd" => Compression::ZSTD(ZstdLevel::try_new(level.unwrap_or(1)).map_err(bad)?),
        "snappy" => Compression::SNAPPY,
        "gzip" => Compression::GZIP(GzipLevel::try_new(level.unwrap_or(6) as u32).map_err(bad)?),
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        other => {
            return Err(Error::Config(format!(
                "table property write.parquet.compression-codec = {other:?}: floe writes zstd, snappy, gzip or uncompressed"
            )));
        }
    };
    // Column-chunk statistics are what Iceberg's file metrics need; page-level statistics
    // would cost encode time for little pruning gain at these file sizes.
    let mut b = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_dictionary_page_size_limit(256 * 1024)
        .set_created_by(format!("floe version {}", env!("CARGO_PKG_VERSION")));
    let group_bytes: usize = match props.get("write.parquet.row-group-size-bytes") {
        Some(v) => v.trim().parse().map_err(|_| {
            Error::Config(format!(
                "table property write.parquet.row-group-size-bytes = {v:?} is not a number"
            ))
        })?,
        None => 128 * 1024 * 1024,
    };
    b = b.set_max_row_group_bytes(Some(group_bytes.max(1024)));
    if let Some(rows) = props.get("write.parquet.row-group-limit") {
        let rows: usize = rows.parse().map_err(|_| {
            Error::Config(format!(
                "table property write.parquet.row-group-limit = {rows:?} is not a number"
            ))
        })?;
        b = b.set_max_row_group_row_count(Some(rows.max(1)));
    }
    Ok(b.build())
}

/// `write.target-file-size-bytes` (default 128 MiB).
pub fn target_file_size(props: &HashMap<String, String>) -> usize {
    props
        .get(TableProperties::PROPERTY_WRITE_TARGET_FILE_SIZE_BYTES)
        .and_then(|v| v.parse().ok())
        .unwrap_or(TableProperties::PROPERTY_WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT)
}

impl DataWriter {
    /// A writer for the table's current schema and default partition spec.
    pub fn new(file_io: &FileIO, metadata: &TableMetadata) -> Result<Self> {
        Self::with_schema(file_io, metadata, metadata.current_schema().clone())
    }

    /// A writer for a given schema of the table (a batch keeps the schema it started with).
    pub fn with_schema(
        file_io: &FileIO,
        metadata: &TableMetadata,
        schema: SchemaRef,
    ) -> Result<Self> {
        let props = metadata.properties();
        Self::build(file_io, metadata, schema, writer_properties(props)?, props)
    }

    /// A writer for the partial files a loader adds to an aggregate table. They are written
    /// with the codec of table property [`PARTIALS_CODEC`] (default `uncompressed`) and
    /// without statistics on string and binary columns (comparing every value for the
    /// bounds costs over a quarter of the encoding): they are on the loader's hot path, and
    /// compaction rewrites them with the table's own codec and full statistics.
    pub fn for_partials(file_io: &FileIO, metadata: &TableMetadata) -> Result<Self> {
        let mut props = metadata.properties().clone();
        let codec = props
            .get(PARTIALS_CODEC)
            .cloned()
            .unwrap_or_else(|| "uncompressed".into());
        if props.get("write.parquet.compression-codec") != Some(&codec) {
            props.remove("write.parquet.compression-level");
        }
        props.insert("write.parquet.compression-codec".into(), codec);
        let schema = metadata.current_schema().clone();
        let mut parquet = writer_properties(&props)?.into_builder();
        for field in schema.as_struct().fields() {
            if matches!(
                *field.field_type,
                Type::Primitive(PrimitiveType::String | PrimitiveType::Binary)
            ) {
                parquet = parquet.set_column_statistics_enabled(
                    ColumnPath::from(field.name.as_str()),
                    EnabledStatistics::None,
                );
            }
        }
        Self::build(file_io, metadata, schema, parquet.build(), &props)
    }

    fn build(
        file_io: &FileIO,
        metadata: &TableMetadata,
        schema: SchemaRef,
        parquet: WriterProperties,
        props: &HashMap<String, String>,
    ) -> Result<Self> {
        let spec = metadata.default_partition_spec().clone();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let locations = RecordingLocations {
            inner: DefaultLocationGenerator::new(metadata)?,
            paths: paths.clone(),
        };
        let names = DefaultFileNameGenerator::new(
            format!("{}", uuid::Uuid::now_v7()),
            None,
            DataFileFormat::Parquet,
        );
        let parquet = ParquetWriterBuilder::new(parquet, schema.clone());
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            target_file_size(props),
            file_io.clone(),
            locations,
            names,
        );
        let splitter = if spec.is_unpartitioned() {
            None
        } else {
            Some(PartitionSplitter::new(schema.clone(), spec.clone())?)
        };
        Ok(Self {
            file_io: file_io.clone(),
            spec_id: spec.spec_id(),
            builder: DataFileWriterBuilder::new(rolling),
            splitter,
            writers: HashMap::new(),
            unpartitioned: None,
            paths,
            rows: 0,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The partition spec the files are partitioned by (the table's default when the writer
    /// was made): what a commit of them names ([`crate::CommitRequest::written_with`]).
    pub fn spec_id(&self) -> i32 {
        self.spec_id
    }

    /// Writes a batch (split by partition). On error the caller should [`Self::abort`].
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match &self.splitter {
            None => {
                if self.unpartitioned.is_none() {
                    self.unpartitioned = Some(self.builder.build(None).await?);
                }
                let w = self.unpartitioned.as_mut().expect("just set");
                w.write(batch.clone()).await?;
            }
            Some(splitter) => {
                for (key, part) in splitter.split(batch)? {
                    let w = match self.writers.get_mut(key.data()) {
                        Some(w) => w,
                        None => {
                            let w = self.builder.build(Some(key.clone())).await?;
                            self.writers.entry(key.data().clone()).or_insert(w)
                        }
                    };
                    w.write(part).await?;
                }
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes every file and returns the data files to commit. On error, the files written
    /// so far are deleted.
    pub async fn close(mut self) -> Result<Vec<DataFile>> {
        let mut files = Vec::new();
        let mut writers: Vec<Writer> = self.writers.drain().map(|(_, w)| w).collect();
        writers.extend(self.unpartitioned.take());
        for mut w in writers {
            match w.close().await {
                Ok(mut f) => files.append(&mut f),
                Err(e) => {
                    drop(self.writers);
                    delete_recorded(&self.file_io, &self.paths).await;
                    return Err(e.into());
                }
            }
        }
        Ok(files)
    }

    /// Drops the batch: deletes every file this writer created.
    pub async fn abort(self) {
        let Self { file_io, paths, .. } = self;
        delete_recorded(&file_io, &paths).await;
    }
}

/// Deletes every path a writer recorded. Takes the parts, not the writer: the writer holds
/// non-`Sync` Parquet state that must not be borrowed across an await.
async fn delete_recorded(file_io: &FileIO, paths: &Mutex<Vec<String>>) {
    let paths = std::mem::take(&mut *paths.lock().expect("paths lock"));
    delete_files(file_io, paths).await;
}

/// Deletes files, ignoring those already gone; failures are logged (the files become orphans
/// for `floe maintain` to collect).
pub async fn delete_files(file_io: &FileIO, paths: Vec<String>) {
    for path in &paths {
        if let Err(e) = file_io.delete(path).await
            && file_io.exists(path).await.unwrap_or(true)
        {
            tracing::warn!(path, error = %e, "could not delete file; it is left as an orphan");
        }
    }
}
