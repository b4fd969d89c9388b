//! `floe table create|list|show|evolve`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use floe_lake::evolve::Change;
use floe_lake::{Catalog, parse_table_ident};
use floe_schema::TableDefinition;
use iceberg::spec::TableMetadata;
use serde_json::{Value, json};

use crate::config::FloeConfig;

#[derive(Subcommand)]
pub enum TableCommand {
    /// Create tables from definitions in schemas/ (existing tables are left as they are).
    Create(CreateArgs),
    /// List the catalog's tables.
    List,
    /// Show a table: schema, partitioning, snapshots, files, rows, committed offsets.
    Show(ShowArgs),
    /// Change a table's schema in place (running loaders pick it up within a flush interval).
    ///
    /// All changes are one commit, applied in this order: drops, renames, promotions,
    /// additions, aliases. Iceberg's rules hold: new columns
    /// get fresh field ids, renames and promotions keep them (old files read under the new
    /// name and type), dropped columns stay in old files but are no longer read.
    Evolve(EvolveArgs),
}

#[derive(Args)]
pub struct EvolveArgs {
    /// Table name (namespace.table).
    name: String,
    /// Add an optional column: name:type[:doc]; nested as a.b (missing structs are created).
    /// Types: boolean, int, long, float, double, decimal(P,S), date, time, timestamp,
    /// timestamptz, string, uuid, binary, fixed[N].
    #[arg(long, value_name = "NAME:TYPE[:DOC]")]
    add_column: Vec<String>,
    /// Add a required column (only on a table without rows): name:type[:doc].
    #[arg(long, value_name = "NAME:TYPE[:DOC]")]
    add_required_column: Vec<String>,
    /// Drop a column (old data files keep their values; readers stop seeing them).
    #[arg(long, value_name = "NAME")]
    drop_column: Vec<String>,
    /// Rename a column: old:new (same field id: old files read under the new name).
    #[arg(long, value_name = "OLD:NEW")]
    rename_column: Vec<String>,
    /// Promote a column's type: name:type (int → long, float → double, wider decimal).
    #[arg(long, value_name = "NAME:TYPE")]
    widen: Vec<String>,
    /// Decode a JSON key into a column: json_key:column (table property floe.alias.*).
    #[arg(long, value_name = "JSON_KEY:COLUMN")]
    add_alias: Vec<String>,
    /// Stop decoding a JSON key by alias (e.g. the one a rename keeps for the old name).
    #[arg(long, value_name = "JSON_KEY")]
    drop_alias: Vec<String>,
    /// Print what would change and the resulting schema; commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Commit even when an aggregate query over this table would no longer plan.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Tables to create (namespace.table), each defined in the schemas directory (or built in).
    #[arg(value_name = "NAME", conflicts_with = "all")]
    names: Vec<String>,
    /// Create every table defined in the schemas directory.
    #[arg(long, conflicts_with = "schema")]
    all: bool,
    /// A table definition file (repeatable).
    #[arg(long, value_name = "FILE")]
    schema: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Table name (namespace.table).
    name: String,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: &FloeConfig, cmd: TableCommand) -> Result<()> {
    let catalog = super::connect(cfg).await?;
    match cmd {
        TableCommand::Create(args) => create(cfg, &catalog, args).await,
        TableCommand::List => {
            for t in catalog.list_tables().await? {
                println!("{t}");
            }
            Ok(())
        }
        TableCommand::Show(args) => show(cfg, &catalog, args).await,
        TableCommand::Evolve(args) => evolve(cfg, catalog, args).await,
    }
}

async fn evolve(cfg: &FloeConfig, catalog: Catalog, args: EvolveArgs) -> Result<()> {
    let ident = parse_table_ident(&args.name)?;
    // One fixed order, so a call reads the same whatever the flag order: drops, renames,
    // promotions, additions, aliases (a dropped name can be added again; an alias may name a
    // column renamed or added in the same call).
    let mut changes = Vec::new();
    for v in &args.drop_column {
        changes.push(Change::parse_drop(v)?);
    }
    for v in &args.rename_column {
        changes.push(Change::parse_rename(v)?);
    }
    for v in &args.widen {
        changes.push(Change::parse_widen(v)?);
    }
    for v in &args.add_column {
        changes.push(Change::parse_add(v, false)?);
    }
    for v in &args.add_required_column {
        changes.push(Change::parse_add(v, true)?);
    }
    for v in &args.drop_alias {
        changes.push(Change::parse_drop_alias(v)?);
    }
    for v in &args.add_alias {
        changes.push(Change::parse_alias(v)?);
    }

    if !args.force {
        check_aggregates(cfg, &catalog, &ident, &changes).await?;
    }
    let committer = floe_lake::Committer::new(catalog);
    let done = floe_lake::evolve::evolve(&committer, &ident, &changes, args.dry_run).await?;
    let verb = if done.committed { "" } else { "would " };
    for line in &done.plan.lines {
        println!("{ident}: {verb}{line}");
    }
    if done.committed {
        println!(
            "{ident}: schema {} → {} committed; running loaders use it from their next batch",
            done.old_schema_id, done.new_schema_id
        );
    } else {
        println!("{ident}: dry run, nothing committed; the schema would be:");
    }
    if !done.committed || done.plan.schema.is_some() {
        for f in done.schema.as_struct().fields() {
            print_field(f, "  ");
        }
    }
    Ok(())
}

/// Refuses a change that would break an aggregate reading this table (a dropped or renamed
/// column its SQL uses, a type it cannot sum): loaders would fail every flush until the SQL is
/// fixed.
async fn check_aggregates(
    cfg: &FloeConfig,
    catalog: &Catalog,
    ident: &iceberg::TableIdent,
    changes: &[Change],
) -> Result<()> {
    let table = ident.to_string();
    let defs: Vec<_> = cfg
        .aggregate_definitions()?
        .into_iter()
        .filter(|d| d.source.as_deref() == Some(table.as_str()))
        .collect();
    if defs.is_empty() {
        return Ok(());
    }
    let (_, meta) = catalog.load_metadata(ident).await?;
    let Some(schema) = floe_lake::evolve::plan(&table, &meta, changes)?.schema else {
        return Ok(());
    };
    let arrow = std::sync::Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
    for def in defs {
        let name = def.name.clone();
        if let Err(e) = floe_aggregate::Aggregator::new(vec![def])
            .columns_read(&arrow)
            .await
        {
            bail!(
                "{table}: the change would break aggregate {name} (sql/aggregates/{name}.sql): {e}\n\
                 change the query first (it reads the table's columns by name), or pass --force"
            );
        }
    }
    Ok(())
}

fn print_field(f: &iceberg::spec::NestedFieldRef, indent: &str) {
    let ty = match f.field_type.as_ref() {
        iceberg::spec::Type::Struct(_) => "struct".to_string(),
        t => t.to_string(),
    };
    println!(
        "{indent}{:>4}  {:<24} {:<16} {}",
        f.id,
        f.name,
        ty,
        if f.required { "required" } else { "optional" }
    );
    if let iceberg::spec::Type::Struct(s) = f.field_type.as_ref() {
        for c in s.fields() {
            print_field(c, &format!("{indent}  "));
        }
    }
}

/// Definition files of the schemas directory, sorted.
pub fn definition_files(dir: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading schemas directory {dir}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

async fn create(cfg: &FloeConfig, catalog: &Catalog, args: CreateArgs) -> Result<()> {
    if args.all {
        return create_definitions(cfg, catalog).await;
    }
    if args.schema.is_empty() && args.names.is_empty() {
        bail!(
            "name tables (floe table create lake.events), definition files with --schema FILE, \
             or use --all for every file in {}",
            cfg.schemas_dir
        )
    }
    let mut defs = args
        .schema
        .iter()
        .map(|f| TableDefinition::from_file(f))
        .collect::<Result<Vec<_>, _>>()?;
    if !args.names.is_empty() {
        let known = known_definitions(cfg)?;
        for name in &args.names {
            let def = known.iter().find(|d| d.full_name() == *name).with_context(|| {
                format!(
                    "no definition of {name} in {} (known: {}); write {}/{name}.json or pass --schema FILE",
                    cfg.schemas_dir,
                    known.iter().map(|d| d.full_name()).collect::<Vec<_>>().join(", "),
                    cfg.schemas_dir
                )
            })?;
            defs.push(def.clone());
        }
    }
    create_all(catalog, &defs).await
}

/// The definitions of the schemas directory, or the built-in ones when there is none.
pub fn known_definitions(cfg: &FloeConfig) -> Result<Vec<TableDefinition>> {
    if std::path::Path::new(&cfg.schemas_dir).is_dir() {
        Ok(definition_files(&cfg.schemas_dir)?
            .iter()
            .map(|f| TableDefinition::from_file(f))
            .collect::<Result<Vec<_>, _>>()?)
    } else {
        Ok(TableDefinition::builtin()?)
    }
}

/// Creates every table of the schemas directory, or the built-in definitions when there is no
/// such directory.
pub async fn create_definitions(cfg: &FloeConfig, catalog: &Catalog) -> Result<()> {
    if !std::path::Path::new(&cfg.schemas_dir).is_dir() {
        tracing::info!(dir = %cfg.schemas_dir, "no schemas directory; using the built-in table definitions");
    }
    let defs = known_definitions(cfg)?;
    if defs.is_empty() {
        bail!("no table definitions (*.json) in {}", cfg.schemas_dir);
    }
    create_all(catalog, &defs).await
}

async fn create_all(catalog: &Catalog, defs: &[TableDefinition]) -> Result<()> {
    for def in defs {
        let (table, created) = catalog.create_table_if_missing(def).await?;
        if created {
            println!(
                "created {} at {}",
                def.full_name(),
                table.metadata().location()
            );
        } else {
            println!("exists  {} (left unchanged)", def.full_name());
        }
    }
    Ok(())
}

/// Every group's committed offsets.
fn all_offsets(meta: &TableMetadata) -> Result<Value> {
    Ok(serde_json::to_value(
        floe_lake::offsets::all_committed_offsets(meta)?,
    )?)
}

pub fn describe(meta: &TableMetadata, name: &str, metadata_location: &str) -> Result<Value> {
    let schema = meta.current_schema();
    let columns: Vec<Value> = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| {
            json!({"id": f.id, "name": f.name, "type": f.field_type.to_string(),
                   "required": f.required, "doc": f.doc})
        })
        .collect();
    let spec = meta.default_partition_spec();
    let partitioning: Vec<Value> = spec
        .fields()
        .iter()
        .map(|p| {
            let source = schema
                .field_by_id(p.source_id)
                .map(|f| f.name.clone())
                .unwrap_or_default();
            json!({"name": p.name, "transform": p.transform.to_string(), "source": source})
        })
        .collect();
    let mut snapshots: Vec<&_> = meta.snapshots().collect();
    snapshots.sort_by_key(|s| (s.sequence_number(), s.timestamp_ms()));
    let snaps: Vec<Value> = snapshots
        .iter()
        .map(|s| {
            let p = &s.summary().additional_properties;
            json!({
                "snapshot_id": s.snapshot_id(),
                "sequence_number": s.sequence_number(),
                "timestamp": s.timestamp().map(|t| t.to_rfc3339()).unwrap_or_default(),
                "operation": s.summary().operation.as_str(),
                "added_records": p.get("added-records").and_then(|v| v.parse::<u64>().ok()),
                "total_records": p.get("total-records").and_then(|v| v.parse::<u64>().ok()),
            })
        })
        .collect();
    let current = meta
        .current_snapshot()
        .map(|s| &s.summary().additional_properties);
    let total = |k: &str| {
        current
            .and_then(|p| p.get(k))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // floe's state (offsets, replay marks) is shown as such, not as properties.
    let props: BTreeMap<&String, &String> = meta
        .properties()
        .iter()
        .filter(|(k, _)| !floe_lake::state::is_state_key(k))
        .collect();
    Ok(json!({
        "table": name,
        "location": meta.location(),
        "metadata_location": metadata_location,
        "format_version": meta.format_version() as u8,
        "schema_id": schema.schema_id(),
        "columns": columns,
        "partitioning": partitioning,
        "properties": props,
        "current_snapshot_id": meta.current_snapshot_id(),
        "snapshots": snaps,
        "data_files": total("total-data-files"),
        "rows": total("total-records"),
        "bytes": total("total-files-size"),
        "committed_offsets": all_offsets(meta)?,
    }))
}

/// The mapping in force for `table`: its `floe.*` properties with the configured pipeline's
/// entries laid over them, each with where it comes from; then whether it works against the
/// current schema.
fn mapping_in_force(cfg: &FloeConfig, table: &str, meta: &TableMetadata) -> Value {
    let own = floe_schema::Mapping::from_table_properties(meta.properties());
    let mut entries: BTreeMap<floe_schema::Setting, (String, String)> = own
        .entries()
        .into_iter()
        .map(|(s, v)| {
            (
                s.clone(),
                (
                    v.to_string(),
                    format!("table property {}", s.property_key()),
                ),
            )
        })
        .collect();
    let (mapping, section) = cfg.mapping_for(table);
    for (s, v) in mapping.entries() {
        let from = format!("{section}.{}", s.config_key());
        entries.insert(s, (v.to_string(), from));
    }
    let problem = floe_loader::transform::prepare(table, meta, &mapping, &section)
        .err()
        .map(|e| match e {
            floe_loader::Error::Config(message) => message,
            other => other.to_string(),
        });
    json!({
        "entries": entries
            .iter()
            .map(|(s, (v, from))| json!({"setting": s.config_key(), "value": v, "from": from}))
            .collect::<Vec<_>>(),
        "problem": problem,
    })
}

async fn show(cfg: &FloeConfig, catalog: &Catalog, args: ShowArgs) -> Result<()> {
    let ident = parse_table_ident(&args.name)?;
    let location = catalog
        .find_metadata_location(&ident)
        .await?
        .ok_or_else(|| floe_lake::Error::NoSuchTable(ident.to_string()))?;
    let (_, meta) = catalog.load_metadata(&ident).await?;
    let mut d = describe(&meta, &ident.to_string(), &location)?;
    d["mapping"] = mapping_in_force(cfg, &ident.to_string(), &meta);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("table     {}", d["table"].as_str().unwrap_or_default());
    println!("location  {}", d["location"].as_str().unwrap_or_default());
    println!(
        "metadata  {}",
        d["metadata_location"].as_str().unwrap_or_default()
    );
    println!(
        "rows      {}   data files {}   bytes {}",
        d["rows"], d["data_files"], d["bytes"]
    );
    println!("\nschema (id {})", d["schema_id"]);
    for c in d["columns"].as_array().into_iter().flatten() {
        println!(
            "  {:>4}  {:<24} {:<16} {}",
            c["id"],
            c["name"].as_str().unwrap_or_default(),
            c["type"].as_str().unwrap_or_default(),
            if c["required"].as_bool() == Some(true) {
                "required"
            } else {
                "optional"
            }
        );
    }
    println!("\npartitioned by");
    for p in d["partitioning"].as_array().into_iter().flatten() {
        println!(
            "  {}({}) as {}",
            p["transform"].as_str().unwrap_or_default(),
            p["source"].as_str().unwrap_or_default(),
            p["name"].as_str().unwrap_or_default()
        );
    }
    println!("\nmapping (unnest, projections, computed columns, rules)");
    let entries = d["mapping"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if entries.is_empty() {
        println!("  (none: JSON keys match columns by name)");
    }
    for e in &entries {
        println!(
            "  {:<28} {:<40} from {}",
            e["setting"].as_str().unwrap_or_default(),
            e["value"].as_str().unwrap_or_default(),
            e["from"].as_str().unwrap_or_default()
        );
    }
    if let Some(p) = d["mapping"]["problem"].as_str() {
        println!("  NOT USABLE: {p}");
    }
    println!("\nproperties");
    for (k, v) in d["properties"].as_object().into_iter().flatten() {
        println!("  {k} = {}", v.as_str().unwrap_or_default());
    }
    let snaps = d["snapshots"].as_array().cloned().unwrap_or_default();
    println!("\nsnapshots ({}; last 10)", snaps.len());
    for s in snaps.iter().rev().take(10).rev() {
        println!(
            "  {:>20}  {}  {:<9} +{} rows → {}",
            s["snapshot_id"],
            s["timestamp"].as_str().unwrap_or_default(),
            s["operation"].as_str().unwrap_or_default(),
            s["added_records"],
            s["total_records"]
        );
    }
    println!("\ncommitted offsets");
    let offsets = d["committed_offsets"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if offsets.is_empty() {
        println!("  (none)");
    }
    for (group, topics) in offsets {
        println!("  group {group}: {topics}");
    }
    Ok(())
}
