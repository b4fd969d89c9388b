//! The schema's tree of fields, edited by path (`device.model`: a column of struct `device`):
//! found, replaced, removed or added, every struct above the edit rebuilt. Errors are the
//! reason alone (the caller says which change they refuse); field ids are never reused.

use std::sync::Arc;

use iceberg::spec::{NestedField, NestedFieldRef, StructType, Type};

/// The ids of `f` and of every field nested in it.
pub(super) fn collect_ids(f: &NestedField, out: &mut Vec<i32>) {
    out.push(f.id);
    match f.field_type.as_ref() {
        Type::Struct(s) => s.fields().iter().for_each(|c| collect_ids(c, out)),
        Type::List(l) => collect_ids(&l.element_field, out),
        Type::Map(m) => {
            collect_ids(&m.key_field, out);
            collect_ids(&m.value_field, out);
        }
        Type::Primitive(_) => {}
    }
}

/// The field at `segs` (exact names).
pub(super) fn find(
    fields: &[NestedFieldRef],
    segs: &[&str],
) -> std::result::Result<NestedFieldRef, String> {
    let mut level = fields.to_vec();
    for (i, seg) in segs.iter().enumerate() {
        let f = level
            .iter()
            .find(|f| f.name == *seg)
            .cloned()
            .ok_or_else(|| no_such(&level, segs, i))?;
        if i + 1 == segs.len() {
            return Ok(f);
        }
        match f.field_type.as_ref() {
            Type::Struct(s) => level = s.fields().to_vec(),
            other => {
                return Err(format!(
                    "{} is a {other}, not a struct",
                    segs[..=i].join(".")
                ));
            }
        }
    }
    unreachable!("paths have at least one segment")
}

fn no_such(level: &[NestedFieldRef], segs: &[&str], i: usize) -> String {
    let names: Vec<&str> = level.iter().map(|f| f.name.as_str()).collect();
    let hint = level
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(segs[i]))
        .map(|f| format!(" (did you mean {}?)", f.name))
        .unwrap_or_default();
    format!(
        "no column {}{hint}; columns here: {}",
        segs[..=i].join("."),
        names.join(", ")
    )
}

/// The fields of the struct at `parent` (top level when empty), or none when it is missing.
pub(super) fn siblings(fields: &[NestedFieldRef], parent: &[&str]) -> Vec<NestedFieldRef> {
    if parent.is_empty() {
        return fields.to_vec();
    }
    match find(fields, parent).map(|f| f.field_type.as_ref().clone()) {
        Ok(Type::Struct(s)) => s.fields().to_vec(),
        _ => Vec::new(),
    }
}

/// Replaces (or with `None` removes) the field at `segs`, rebuilding its parent structs.
pub(super) fn edit_at(
    fields: &mut Vec<NestedFieldRef>,
    segs: &[&str],
    edit: &mut dyn FnMut(&NestedFieldRef) -> Option<NestedFieldRef>,
) -> std::result::Result<(), String> {
    let pos = fields
        .iter()
        .position(|f| f.name == segs[0])
        .ok_or_else(|| no_such(fields, segs, 0))?;
    if segs.len() == 1 {
        match edit(&fields[pos]) {
            Some(f) => fields[pos] = f,
            None => {
                fields.remove(pos);
            }
        }
        return Ok(());
    }
    let Type::Struct(s) = fields[pos].field_type.as_ref() else {
        return Err(format!("{} is not a struct", segs[0]));
    };
    let mut inner = s.fields().to_vec();
    edit_at(&mut inner, &segs[1..], edit)?;
    if inner.is_empty() {
        return Err(format!(
            "it is the last field of struct {}; drop {} instead",
            segs[0], segs[0]
        ));
    }
    let mut parent = fields[pos].as_ref().clone();
    parent.field_type = Box::new(Type::Struct(StructType::new(inner)));
    fields[pos] = Arc::new(parent);
    Ok(())
}

/// Adds `field` at `segs` (its last segment is the field's name), creating missing parent
/// structs (optional) with ids from `next_id`. Returns the structs created.
pub(super) fn add_at(
    fields: &mut Vec<NestedFieldRef>,
    segs: &[&str],
    field: NestedField,
    next_id: &mut i32,
) -> std::result::Result<Vec<String>, String> {
    if segs.len() == 1 {
        if let Some(f) = fields.iter().find(|f| f.name.eq_ignore_ascii_case(segs[0])) {
            return Err(if f.name == segs[0] {
                format!("column {} already exists", f.name)
            } else {
                format!(
                    "column {} already exists (Trino folds names to lower case)",
                    f.name
                )
            });
        }
        fields.push(Arc::new(field));
        return Ok(Vec::new());
    }
    let mut created = Vec::new();
    let pos = match fields.iter().position(|f| f.name == segs[0]) {
        Some(p) => p,
        None => {
            if let Some(f) = fields.iter().find(|f| f.name.eq_ignore_ascii_case(segs[0])) {
                return Err(format!(
                    "column {} already exists (Trino folds names to lower case)",
                    f.name
                ));
            }
            let id = *next_id;
            *next_id += 1;
            fields.push(Arc::new(NestedField::optional(
                id,
                segs[0],
                Type::Struct(StructType::new(Vec::new())),
            )));
            created.push(segs[0].to_string());
            fields.len() - 1
        }
    };
    let Type::Struct(s) = fields[pos].field_type.as_ref() else {
        return Err(format!(
            "{} is a {}, not a struct",
            segs[0], fields[pos].field_type
        ));
    };
    let mut inner = s.fields().to_vec();
    let more = add_at(&mut inner, &segs[1..], field, next_id)?;
    created.extend(more.into_iter().map(|c| format!("{}.{c}", segs[0])));
    let mut parent = fields[pos].as_ref().clone();
    parent.field_type = Box::new(Type::Struct(StructType::new(inner)));
    fields[pos] = Arc::new(parent);
    Ok(created)
}
