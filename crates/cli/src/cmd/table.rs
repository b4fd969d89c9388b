//! `floe table create|list|show|evolve`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use floe_lake::evolve::Change;
use floe_lake::summary::TableSummary;
use floe_lake::{Catalog, parse_table_ident};
use floe_loader::transform::MappingInForce;
use floe_schema::TableDefinition;

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

/// Refuses a change that would break an aggregate reading this table
/// ([`floe_aggregate::guard`]): loaders would fail every flush until the SQL is fixed.
async fn check_aggregates(
    cfg: &FloeConfig,
    catalog: &Catalog,
    ident: &iceberg::TableIdent,
    changes: &[Change],
) -> Result<()> {
    let table = ident.to_string();
    let defs = cfg.aggregate_definitions()?;
    if floe_aggregate::guard::readers(&defs, &table).is_empty() {
        return Ok(()); // nothing to break: no reading of the table's schema, no plan
    }
    let (_, meta) = catalog.load_metadata(ident).await?;
    if let Some(schema) = floe_lake::evolve::plan(&table, &meta, changes)?.schema {
        floe_aggregate::guard::check_schema_change(&defs, &table, &schema).await?;
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
    Ok(TableDefinition::known(Path::new(&cfg.schemas_dir))?)
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

/// What `floe table show` reports: the table's summary and the mapping in force.
#[derive(serde::Serialize)]
struct Shown {
    #[serde(flatten)]
    summary: TableSummary,
    mapping: MappingInForce,
}

async fn show(cfg: &FloeConfig, catalog: &Catalog, args: ShowArgs) -> Result<()> {
    let ident = parse_table_ident(&args.name)?;
    let name = ident.to_string();
    let location = catalog
        .find_metadata_location(&ident)
        .await?
        .ok_or_else(|| floe_lake::Error::NoSuchTable(name.clone()))?;
    let (_, meta) = catalog.load_metadata(&ident).await?;
    let (mapping, section) = cfg.mapping_for(&name);
    let shown = Shown {
        summary: floe_lake::summary::summarize(&meta, &name, &location)?,
        mapping: floe_loader::transform::mapping_in_force(&name, &meta, &mapping, &section),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    print_summary(&shown.summary);
    print_mapping(&shown.mapping);
    print_state(&shown.summary)
}

fn print_summary(d: &TableSummary) {
    println!("table     {}", d.table);
    println!("location  {}", d.location);
    println!("metadata  {}", d.metadata_location);
    println!(
        "rows      {}   data files {}   bytes {}",
        d.rows, d.data_files, d.bytes
    );
    println!("\nschema (id {})", d.schema_id);
    for c in &d.columns {
        println!(
            "  {:>4}  {:<24} {:<16} {}",
            c.id,
            c.name,
            c.ty,
            if c.required { "required" } else { "optional" }
        );
    }
    println!("\npartitioned by");
    for p in &d.partitioning {
        println!("  {}({}) as {}", p.transform, p.source, p.name);
    }
}

fn print_mapping(m: &MappingInForce) {
    println!("\nmapping (unnest, projections, computed columns, rules)");
    if m.entries.is_empty() {
        println!("  (none: JSON keys match columns by name)");
    }
    for e in &m.entries {
        println!("  {:<28} {:<40} from {}", e.setting, e.value, e.from);
    }
    if let Some(p) = &m.problem {
        println!("  NOT USABLE: {p}");
    }
}

fn print_state(d: &TableSummary) -> Result<()> {
    println!("\nproperties");
    for (k, v) in &d.properties {
        println!("  {k} = {v}");
    }
    println!("\nsnapshots ({}; last 10)", d.snapshots.len());
    let shown = d.snapshots.len().saturating_sub(10);
    let opt = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |n| n.to_string());
    for s in &d.snapshots[shown..] {
        println!(
            "  {:>20}  {}  {:<9} +{} rows → {}",
            s.snapshot_id,
            s.timestamp,
            s.operation,
            opt(s.added_records),
            opt(s.total_records)
        );
    }
    println!("\ncommitted offsets");
    if d.committed_offsets.is_empty() {
        println!("  (none)");
    }
    for (group, topics) in &d.committed_offsets {
        println!("  group {group}: {}", serde_json::to_value(topics)?);
    }
    Ok(())
}
