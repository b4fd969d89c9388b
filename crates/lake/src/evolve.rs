//! Schema evolution: `floe table evolve`. A list of [`Change`]s is planned against a table's
//! current metadata ([`plan`]) into a new schema (same field ids for kept columns, fresh ids
//! above `last-column-id` for new ones) plus table-property updates, then committed with the
//! catalog's compare-and-swap ([`evolve`]): on a lost race the plan is made again from the
//! winner's metadata, so a concurrent change is never overwritten.
//!
//! What Iceberg forbids is refused with the reason and what to do instead: type changes other
//! than the allowed promotions (int → long, float → double, decimal precision widening), a new
//! required column on a table that has rows, dropping a partition source or identifier column,
//! names that clash (also by case: Trino folds names), and anything the Trino guard refuses.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use iceberg::TableIdent;
use iceberg::spec::{NestedField, NestedFieldRef, PrimitiveType, Schema, TableMetadata, Type};

use crate::{Committer, Error, Result};
use fields::{add_at, collect_ids, edit_at, find, siblings};

use floe_schema::names::ALIAS_PROPERTY_PREFIX as ALIAS_PREFIX;

mod fields;

/// One requested change. Paths are dot-separated (`device.model`).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new column (optional unless `required`), with an optional doc string.
    AddColumn {
        /// Where, e.g. `referrer` or `device.model`; missing parent structs are created.
        path: String,
        /// Its type.
        ty: PrimitiveType,
        /// Doc string.
        doc: Option<String>,
        /// Required (only on a table without rows).
        required: bool,
    },
    /// Remove a column (old data files keep it; readers stop seeing it).
    DropColumn {
        /// The column.
        path: String,
    },
    /// Rename a column (same field id: old and new files read under the new name).
    RenameColumn {
        /// The column.
        path: String,
        /// Its new (last-segment) name.
        to: String,
    },
    /// Promote a column's type (int → long, float → double, wider decimal precision).
    Widen {
        /// The column.
        path: String,
        /// The wider type.
        ty: PrimitiveType,
    },
    /// Stop decoding JSON key `json_key` by alias.
    DropAlias {
        /// The JSON key.
        json_key: String,
    },
    /// Decode JSON key `json_key` into `column` (`floe.alias.<json_key> = <column>`).
    AddAlias {
        /// The JSON key.
        json_key: String,
        /// The top-level column it feeds.
        column: String,
    },
}

impl Change {
    /// `--add-column name:type[:doc]` (`required` for `--add-required-column`).
    pub fn parse_add(spec: &str, required: bool) -> Result<Self> {
        let mut parts = spec.splitn(3, ':');
        let path = parts.next().unwrap_or_default().trim();
        let ty = parts.next().map(str::trim).unwrap_or_default();
        if path.is_empty() || ty.is_empty() {
            return Err(bad(format!(
                "--add-column {spec:?}: expected name:type[:doc], e.g. referrer:string or device.model:string:the model"
            )));
        }
        check_path(path, "--add-column")?;
        Ok(Change::AddColumn {
            path: path.to_string(),
            ty: parse_type(ty).map_err(|e| bad(format!("--add-column {spec:?}: {e}")))?,
            doc: parts
                .next()
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty()),
            required,
        })
    }

    /// `--drop-column name`.
    pub fn parse_drop(spec: &str) -> Result<Self> {
        let path = spec.trim();
        check_path(path, "--drop-column")?;
        Ok(Change::DropColumn {
            path: path.to_string(),
        })
    }

    /// `--rename-column old:new` (`new` is the last segment only).
    pub fn parse_rename(spec: &str) -> Result<Self> {
        let (path, to) = pair(spec, "--rename-column", "old:new", "value:amount")?;
        check_path(path, "--rename-column")?;
        if to.is_empty() || to.contains('.') {
            return Err(bad(format!(
                "--rename-column {spec:?}: the new name is one name without dots (a column stays in its struct)"
            )));
        }
        Ok(Change::RenameColumn {
            path: path.to_string(),
            to: to.to_string(),
        })
    }

    /// `--widen name:type`.
    pub fn parse_widen(spec: &str) -> Result<Self> {
        let (path, ty) = pair(spec, "--widen", "name:type", "session_duration:long")?;
        check_path(path, "--widen")?;
        Ok(Change::Widen {
            path: path.to_string(),
            ty: parse_type(ty).map_err(|e| bad(format!("--widen {spec:?}: {e}")))?,
        })
    }

    /// `--drop-alias json_key`.
    pub fn parse_drop_alias(spec: &str) -> Result<Self> {
        let key = spec.trim();
        if key.is_empty() {
            return Err(bad("--drop-alias: expected a JSON key".into()));
        }
        Ok(Change::DropAlias {
            json_key: key.to_string(),
        })
    }

    /// `--add-alias json_key:column`.
    pub fn parse_alias(spec: &str) -> Result<Self> {
        let (key, column) = pair(spec, "--add-alias", "json_key:column", "ts:event_ts")?;
        if key.is_empty() || column.is_empty() {
            return Err(bad(format!(
                "--add-alias {spec:?}: expected json_key:column"
            )));
        }
        Ok(Change::AddAlias {
            json_key: key.to_string(),
            column: column.to_string(),
        })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddColumn {
                path, ty, required, ..
            } => write!(
                f,
                "add {} column {path} {ty}",
                if *required { "required" } else { "optional" }
            ),
            Change::DropColumn { path } => write!(f, "drop column {path}"),
            Change::RenameColumn { path, to } => write!(f, "rename column {path} to {to}"),
            Change::Widen { path, ty } => write!(f, "widen column {path} to {ty}"),
            Change::AddAlias { json_key, column } => {
                write!(f, "decode JSON key {json_key:?} into column {column}")
            }
            Change::DropAlias { json_key } => write!(f, "drop alias {json_key:?}"),
        }
    }
}

fn bad(msg: String) -> Error {
    Error::Config(msg)
}

/// Splits `a:b` (both trimmed) or says what `flag` expects.
fn pair<'a>(spec: &'a str, flag: &str, form: &str, example: &str) -> Result<(&'a str, &'a str)> {
    spec.split_once(':')
        .map(|(a, b)| (a.trim(), b.trim()))
        .ok_or_else(|| bad(format!("{flag} {spec:?}: expected {form}, e.g. {example}")))
}

fn check_path(path: &str, flag: &str) -> Result<()> {
    if path.is_empty() || path.split('.').any(|s| s.trim().is_empty()) {
        return Err(bad(format!(
            "{flag} {path:?}: not a column path (name or a.b)"
        )));
    }
    Ok(())
}

/// Parses an Iceberg primitive type name (`long`, `decimal(10,2)`, `timestamptz`, …) or a
/// common SQL spelling of one (`bigint`, `varchar`, `boolean`, `integer`).
pub fn parse_type(name: &str) -> std::result::Result<PrimitiveType, String> {
    let lower = name.trim().to_ascii_lowercase();
    let canonical = match lower.as_str() {
        "bool" => "boolean",
        "integer" | "int32" => "int",
        "bigint" | "int64" => "long",
        "real" | "float32" => "float",
        "float64" | "double precision" => "double",
        "varchar" | "text" | "utf8" => "string",
        "varbinary" | "bytes" => "binary",
        "timestamp with time zone" => "timestamptz",
        other => other,
    };
    serde_json::from_value::<PrimitiveType>(serde_json::Value::String(canonical.replace(' ', "")))
        .map_err(|_| {
            format!(
                "unknown type {name:?} (one of boolean, int, long, float, double, decimal(P,S), \
                 date, time, timestamp, timestamptz, string, uuid, binary, fixed[N])"
            )
        })
}

/// What a plan does: the new schema (when it changed), property updates and one line per
/// change for people.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The evolved schema, `None` when only properties change.
    pub schema: Option<Schema>,
    /// Table properties to set.
    pub properties: HashMap<String, String>,
    /// Table properties to remove.
    pub removed: Vec<String>,
    /// One line per change, e.g. `add optional column referrer string (field id 17)`.
    pub lines: Vec<String>,
}

/// Plans `changes` against `meta`'s current schema, refusing what Iceberg forbids.
pub fn plan(table: &str, meta: &TableMetadata, changes: &[Change]) -> Result<Plan> {
    if changes.is_empty() {
        return Err(bad(format!(
            "table evolve {table}: no change given (--add-column, --drop-column, --rename-column, --widen, --add-alias)"
        )));
    }
    let mut planner = Planner::new(table, meta);
    for change in changes {
        planner.apply(change)?;
    }
    planner.finish()
}

/// A plan being made: the schema's fields and the aliases as the changes so far left them.
struct Planner<'a> {
    table: &'a str,
    meta: &'a TableMetadata,
    /// The top-level fields of the schema being evolved.
    fields: Vec<NestedFieldRef>,
    /// The id of the next new field: above `last-column-id` and every id in the schema.
    next_id: i32,
    /// The aliases (JSON key → column) before the changes.
    before: BTreeMap<String, String>,
    /// The aliases after the changes so far.
    aliases: BTreeMap<String, String>,
    lines: Vec<String>,
    schema_changed: bool,
    /// Whether the table has rows (a new required column would have no value in them).
    has_rows: bool,
    /// The field ids that cannot be dropped, and what they are.
    protected: Vec<(i32, &'static str)>,
}

impl<'a> Planner<'a> {
    /// A plan of no change yet on `meta`'s current schema.
    fn new(table: &'a str, meta: &'a TableMetadata) -> Self {
        let current = meta.current_schema();
        let fields: Vec<NestedFieldRef> = current.as_struct().fields().to_vec();
        let next_id = meta.last_column_id().max(current.highest_field_id()) + 1;
        let before: BTreeMap<String, String> = meta
            .properties()
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(ALIAS_PREFIX)
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        let aliases = before.clone();
        let has_rows = meta.current_snapshot().is_some_and(|s| {
            s.summary()
                .additional_properties
                .get("total-records")
                .is_none_or(|n| n != "0")
        });
        let protected: Vec<(i32, &'static str)> = meta
            .default_partition_spec()
            .fields()
            .iter()
            .map(|f| (f.source_id, "the partition spec's source"))
            .chain(
                current
                    .identifier_field_ids()
                    .map(|id| (id, "an identifier field")),
            )
            .collect();
        Self {
            table,
            meta,
            fields,
            next_id,
            before,
            aliases,
            lines: Vec::new(),
            schema_changed: false,
            has_rows,
            protected,
        }
    }

    /// The error refusing `what`, saying why.
    fn refuse(&self, what: &Change, why: String) -> Error {
        bad(format!("{}: cannot {what}: {why}", self.table))
    }

    /// Applies one change to the plan, or refuses it.
    fn apply(&mut self, change: &Change) -> Result<()> {
        match change {
            Change::AddColumn {
                path,
                ty,
                doc,
                required,
            } => self.add_column(change, path, ty, doc.as_deref(), *required),
            Change::DropColumn { path } => self.drop_column(change, path),
            Change::RenameColumn { path, to } => self.rename_column(change, path, to),
            Change::Widen { path, ty } => self.widen(change, path, ty),
            Change::AddAlias { json_key, column } => self.add_alias(change, json_key, column),
            Change::DropAlias { json_key } => self.drop_alias(change, json_key),
        }
    }

    /// [`Change::AddColumn`]: a new field with a fresh id (and fresh ids for the parent
    /// structs it creates).
    fn add_column(
        &mut self,
        change: &Change,
        path: &str,
        ty: &PrimitiveType,
        doc: Option<&str>,
        required: bool,
    ) -> Result<()> {
        if required && self.has_rows {
            return Err(self.refuse(
                change,
                "the table has rows, and they would have no value for a required \
                 column; add it as optional (--add-column), backfill, and rely on \
                 readers or a rule to enforce it"
                    .into(),
            ));
        }
        let segs: Vec<&str> = path.split('.').collect();
        let mut field = NestedField::optional(
            self.next_id,
            segs[segs.len() - 1],
            Type::Primitive(ty.clone()),
        );
        field.required = required;
        if let Some(d) = doc {
            field = field.with_doc(d);
        }
        let field_id = self.next_id;
        self.next_id += 1;
        let created = add_at(&mut self.fields, &segs, field, &mut self.next_id)
            .map_err(|why| self.refuse(change, why))?;
        let mut line = format!("{change} (field id {field_id})");
        if !created.is_empty() {
            line.push_str(&format!("; new struct {}", created.join(", ")));
        }
        self.lines.push(line);
        self.schema_changed = true;
        Ok(())
    }

    /// [`Change::DropColumn`]: unless it is (or holds) a partition source or identifier
    /// field, or is the table's only column.
    fn drop_column(&mut self, change: &Change, path: &str) -> Result<()> {
        let segs: Vec<&str> = path.split('.').collect();
        let f = find(&self.fields, &segs).map_err(|why| self.refuse(change, why))?;
        let mut ids = Vec::new();
        collect_ids(&f, &mut ids);
        if let Some((_, role)) = self.protected.iter().find(|(id, _)| ids.contains(id)) {
            return Err(self.refuse(
                change,
                format!("it is {role}; change the partition spec or identifier fields first"),
            ));
        }
        if segs.len() == 1 && self.fields.len() == 1 {
            return Err(self.refuse(change, "it is the table's only column".into()));
        }
        edit_at(&mut self.fields, &segs, &mut |_| None).map_err(|why| self.refuse(change, why))?;
        self.lines.push(format!(
            "{change} (field id {}; old files keep their values)",
            f.id
        ));
        self.schema_changed = true;
        Ok(())
    }

    /// [`Change::RenameColumn`]: same field id, no clash with a sibling (also by case); a
    /// top-level column's aliases follow it and its old name becomes one.
    fn rename_column(&mut self, change: &Change, path: &str, to: &str) -> Result<()> {
        let segs: Vec<&str> = path.split('.').collect();
        let f = find(&self.fields, &segs).map_err(|why| self.refuse(change, why))?;
        if f.name == *to {
            return Err(self.refuse(change, "it already has that name".into()));
        }
        let siblings = siblings(&self.fields, &segs[..segs.len() - 1]);
        if let Some(clash) = siblings
            .iter()
            .find(|s| s.id != f.id && s.name.eq_ignore_ascii_case(to))
        {
            return Err(self.refuse(
                change,
                format!(
                    "column {} already exists (Trino folds names to lower case)",
                    clash.name
                ),
            ));
        }
        let to = to.to_string();
        edit_at(&mut self.fields, &segs, &mut |f| {
            let mut g = f.as_ref().clone();
            g.name = to.clone();
            Some(Arc::new(g))
        })
        .map_err(|why| self.refuse(change, why))?;
        self.lines.push(format!(
            "{change} (field id {}; old files read under the new name)",
            f.id
        ));
        if segs.len() == 1 {
            // Aliases follow the column, and producers still sending the old key keep
            // filling it.
            for (key, col) in self.aliases.iter_mut() {
                if col == path {
                    col.clone_from(&to);
                    self.lines
                        .push(format!("alias {key:?} now decodes into {to}"));
                }
            }
            if !self.aliases.contains_key(path) {
                self.aliases.insert(path.to_string(), to.clone());
                self.lines.push(format!(
                    "JSON key {path:?} keeps decoding into {to} (alias; --drop-alias {path} to stop)"
                ));
            }
        }
        self.schema_changed = true;
        Ok(())
    }

    /// [`Change::Widen`]: only the promotions Iceberg allows.
    fn widen(&mut self, change: &Change, path: &str, ty: &PrimitiveType) -> Result<()> {
        let segs: Vec<&str> = path.split('.').collect();
        let f = find(&self.fields, &segs).map_err(|why| self.refuse(change, why))?;
        let Type::Primitive(from) = f.field_type.as_ref() else {
            return Err(self.refuse(
                change,
                format!("{path} is a {}, not a primitive column", f.field_type),
            ));
        };
        if from == ty {
            return Err(self.refuse(change, format!("{path} is already {ty}")));
        }
        if !promotion_allowed(from, ty) {
            return Err(self.refuse(
                change,
                format!(
                    "Iceberg does not allow {from} → {ty} (allowed: int → long, \
                     float → double, decimal(P,S) → decimal(P2,S) with P2 > P); to \
                     change a type, add a new column (e.g. {path}_v2), backfill it and \
                     drop {path}"
                ),
            ));
        }
        let ty = ty.clone();
        edit_at(&mut self.fields, &segs, &mut |f| {
            let mut g = f.as_ref().clone();
            g.field_type = Box::new(Type::Primitive(ty.clone()));
            Some(Arc::new(g))
        })
        .map_err(|why| self.refuse(change, why))?;
        self.lines.push(format!(
            "{change} (was {from}; old files are promoted on read)"
        ));
        self.schema_changed = true;
        Ok(())
    }

    /// [`Change::AddAlias`]: into a top-level column.
    fn add_alias(&mut self, change: &Change, json_key: &str, column: &str) -> Result<()> {
        if !self.fields.iter().any(|f| f.name == *column) {
            return Err(self.refuse(change, format!("there is no top-level column {column}")));
        }
        match self
            .aliases
            .insert(json_key.to_string(), column.to_string())
        {
            Some(old) if old != *column => self.lines.push(format!("{change} (was into {old})")),
            _ => self.lines.push(change.to_string()),
        }
        Ok(())
    }

    /// [`Change::DropAlias`]: of an alias that exists.
    fn drop_alias(&mut self, change: &Change, json_key: &str) -> Result<()> {
        if self.aliases.remove(json_key).is_none() {
            let known: Vec<&str> = self.aliases.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            return Err(self.refuse(change, format!("there is no such alias (aliases: {known})")));
        }
        self.lines.push(change.to_string());
        Ok(())
    }

    /// The plan: the evolved schema (checked as a table definition) when it changed, and the
    /// alias properties to set and remove.
    fn finish(mut self) -> Result<Plan> {
        let schema = if self.schema_changed {
            Some(self.evolved_schema()?)
        } else {
            None
        };
        let properties = self
            .aliases
            .iter()
            .filter(|(k, v)| self.before.get(*k) != Some(v))
            .map(|(k, v)| (format!("{ALIAS_PREFIX}{k}"), v.clone()))
            .collect();
        let removed = self
            .before
            .keys()
            .filter(|k| !self.aliases.contains_key(*k))
            .map(|k| format!("{ALIAS_PREFIX}{k}"))
            .collect();
        Ok(Plan {
            schema,
            properties,
            removed,
            lines: self.lines,
        })
    }

    /// The schema of the evolved fields (same schema id and identifier fields), noting the
    /// aliases left pointing at no column.
    fn evolved_schema(&mut self) -> Result<Schema> {
        let (table, meta) = (self.table, self.meta);
        let current = meta.current_schema();
        let schema = Schema::builder()
            .with_schema_id(current.schema_id())
            .with_identifier_field_ids(current.identifier_field_ids())
            .with_fields(std::mem::take(&mut self.fields))
            .build()
            .map_err(|e| bad(format!("{table}: the evolved schema is invalid: {e}")))?;
        // An alias of a dropped column points at nothing (the decoder ignores it).
        for (key, v) in &self.aliases {
            if schema.field_by_name(v).is_none() {
                self.lines.push(format!(
                    "note: alias {key:?} → {v} now points at no column and is ignored"
                ));
            }
        }
        crate::compat::check_definition(table, meta.format_version(), &schema, meta.properties())?;
        Ok(schema)
    }
}

fn promotion_allowed(from: &PrimitiveType, to: &PrimitiveType) -> bool {
    match (from, to) {
        (PrimitiveType::Int, PrimitiveType::Long) => true,
        (PrimitiveType::Float, PrimitiveType::Double) => true,
        (
            PrimitiveType::Decimal {
                precision: p1,
                scale: s1,
            },
            PrimitiveType::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 > p1,
        _ => false,
    }
}

/// What [`evolve`] did.
#[derive(Debug, Clone)]
pub struct Evolved {
    /// Schema id before.
    pub old_schema_id: i32,
    /// Schema id after (same when only properties changed or on a dry run).
    pub new_schema_id: i32,
    /// The plan as committed (from the metadata the commit was based on).
    pub plan: Plan,
    /// The evolved schema (or the current one on a dry run without schema change).
    pub schema: Schema,
    /// Whether anything was committed.
    pub committed: bool,
}

/// Plans and (unless `dry_run`) commits `changes` to `ident` with compare-and-swap; on a lost
/// race the plan is made again against the new metadata.
pub async fn evolve(
    committer: &Committer,
    ident: &TableIdent,
    changes: &[Change],
    dry_run: bool,
) -> Result<Evolved> {
    let table = ident.to_string();
    if dry_run {
        let (_, meta) = committer.catalog().load_metadata(ident).await?;
        let plan = plan(&table, &meta, changes)?;
        let schema = plan
            .schema
            .clone()
            .unwrap_or_else(|| meta.current_schema().as_ref().clone());
        let id = meta.current_schema_id();
        return Ok(Evolved {
            old_schema_id: id,
            new_schema_id: id,
            plan,
            schema,
            committed: false,
        });
    }
    let mut seen: Option<(i32, Plan)> = None;
    let done = committer
        .update_metadata(ident, |location, base| {
            let p = plan(&table, base, changes)?;
            seen = Some((base.current_schema_id(), p.clone()));
            let mut b = base.clone().into_builder(Some(location.to_string()));
            if let Some(schema) = p.schema {
                b = b.add_current_schema(schema)?;
            }
            if !p.properties.is_empty() {
                b = b.set_properties(p.properties)?;
            }
            if !p.removed.is_empty() {
                b = b.remove_properties(&p.removed)?;
            }
            Ok(Some(b.build()?))
        })
        .await?;
    let (old_schema_id, plan) = seen.expect("update_metadata plans at least once");
    let (_, meta) = done.ok_or_else(|| bad(format!("{table}: nothing was committed")))?;
    Ok(Evolved {
        old_schema_id,
        new_schema_id: meta.current_schema_id(),
        plan,
        schema: meta.current_schema().as_ref().clone(),
        committed: true,
    })
}

#[cfg(test)]
mod tests;
