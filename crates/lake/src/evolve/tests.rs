use std::collections::HashMap;

use iceberg::spec::{PrimitiveType, TableMetadata, TableMetadataBuilder, Type};

use super::{Change, parse_type, plan};

fn events() -> TableMetadata {
    let def = floe_schema::TableDefinition::builtin()
        .unwrap()
        .into_iter()
        .find(|d| d.name == "events")
        .unwrap();
    TableMetadataBuilder::new(
        def.schema,
        def.partition_spec,
        iceberg::spec::SortOrder::unsorted_order(),
        "memory://t".to_string(),
        iceberg::spec::FormatVersion::V2,
        HashMap::new(),
    )
    .unwrap()
    .build()
    .unwrap()
    .metadata
}

fn apply(meta: &TableMetadata, changes: &[Change]) -> TableMetadata {
    let p = plan("lake.events", meta, changes).unwrap();
    let mut b = meta.clone().into_builder(None);
    if let Some(s) = p.schema {
        b = b.add_current_schema(s).unwrap();
    }
    if !p.properties.is_empty() {
        b = b.set_properties(p.properties).unwrap();
    }
    if !p.removed.is_empty() {
        b = b.remove_properties(&p.removed).unwrap();
    }
    b.build().unwrap().metadata
}

fn err(meta: &TableMetadata, changes: &[Change]) -> String {
    plan("lake.events", meta, changes).unwrap_err().to_string()
}

#[test]
fn add_columns_get_fresh_ids_above_every_id_ever_used() {
    let m = events();
    let last = m.last_column_id();
    let m = apply(
        &m,
        &[Change::parse_add("referrer:string:where from", false).unwrap()],
    );
    let f = m.current_schema().field_by_name("referrer").unwrap();
    assert_eq!(f.id, last + 1);
    assert!(!f.required);
    assert_eq!(f.doc.as_deref(), Some("where from"));
    assert_eq!(m.current_schema_id(), 1);
    // Dropping it and adding it again gives a new id: old files' values do not come back.
    let m = apply(&m, &[Change::parse_drop("referrer").unwrap()]);
    assert!(m.current_schema().field_by_name("referrer").is_none());
    let m = apply(&m, &[Change::parse_add("referrer:string", false).unwrap()]);
    assert_eq!(
        m.current_schema().field_by_name("referrer").unwrap().id,
        last + 2
    );
}

#[test]
fn nested_add_creates_missing_structs_and_extends_existing_ones() {
    let m = apply(
        &events(),
        &[Change::parse_add("device.model:string", false).unwrap()],
    );
    let s = m.current_schema();
    let dev = s.field_by_name("device").unwrap();
    assert!(matches!(dev.field_type.as_ref(), Type::Struct(_)));
    assert!(s.field_by_name("device.model").is_some());
    let m = apply(&m, &[Change::parse_add("device.os:string", false).unwrap()]);
    let s = m.current_schema();
    assert!(s.field_by_name("device.os").is_some() && s.field_by_name("device.model").is_some());
    // A primitive cannot take children.
    assert!(
        err(
            &m,
            &[Change::parse_add("country.code:string", false).unwrap()]
        )
        .contains("not a struct")
    );
}

#[test]
fn rename_keeps_the_field_id_and_refuses_clashes_by_case() {
    let m = events();
    let id = m.current_schema().field_by_name("value").unwrap().id;
    let m2 = apply(&m, &[Change::parse_rename("value:amount").unwrap()]);
    assert_eq!(m2.current_schema().field_by_name("amount").unwrap().id, id);
    assert!(m2.current_schema().field_by_name("value").is_none());
    let e = err(&m, &[Change::parse_rename("value:Country").unwrap()]);
    assert!(e.contains("country already exists"), "{e}");
    let e = err(&m, &[Change::parse_rename("valeu:amount").unwrap()]);
    assert!(e.contains("no column valeu"), "{e}");
}

#[test]
fn only_iceberg_promotions_widen() {
    let m = events();
    let m2 = apply(&m, &[Change::parse_widen("session_duration:long").unwrap()]);
    assert_eq!(
        *m2.current_schema()
            .field_by_name("session_duration")
            .unwrap()
            .field_type,
        Type::Primitive(PrimitiveType::Long)
    );
    let e = err(&m, &[Change::parse_widen("country:int").unwrap()]);
    assert!(
        e.contains("does not allow string → int") && e.contains("add a new column"),
        "{e}"
    );
    let e = err(&m, &[Change::parse_widen("value:float").unwrap()]);
    assert!(e.contains("does not allow double → float"), "{e}");
    assert!(super::promotion_allowed(
        &parse_type("decimal(10,2)").unwrap(),
        &parse_type("decimal(12, 2)").unwrap()
    ));
    assert!(!super::promotion_allowed(
        &parse_type("decimal(10,2)").unwrap(),
        &parse_type("decimal(12,3)").unwrap()
    ));
}

#[test]
fn forbidden_drops_and_required_adds_are_refused() {
    let m = events();
    let e = err(&m, &[Change::parse_drop("event_ts").unwrap()]);
    assert!(e.contains("partition spec"), "{e}");
    // Without rows a required column is fine; the refusal needs a snapshot with rows.
    apply(&m, &[Change::parse_add("tenant:string", true).unwrap()]);
    assert!(Change::parse_add("x", false).is_err());
    assert!(
        Change::parse_add("x:varchar(", false)
            .unwrap_err()
            .to_string()
            .contains("unknown type")
    );
    assert_eq!(parse_type("bigint").unwrap(), PrimitiveType::Long);
    // The Trino guard applies to evolved schemas too.
    let e = err(&m, &[Change::parse_add("t:timestamp_ns", false).unwrap()]);
    assert!(e.contains("Trino"), "{e}");
}

#[test]
fn aliases_are_properties_and_must_name_a_column() {
    let m = apply(&events(), &[Change::parse_alias("ts:event_ts").unwrap()]);
    assert_eq!(m.properties()["floe.alias.ts"], "event_ts");
    assert_eq!(m.current_schema_id(), 0);
    let e = err(&m, &[Change::parse_alias("ts:nope").unwrap()]);
    assert!(e.contains("no top-level column nope"), "{e}");
}

#[test]
fn changes_apply_in_order_within_one_plan() {
    let m = apply(
        &events(),
        &[
            Change::parse_add("referrer:string", false).unwrap(),
            Change::parse_rename("referrer:source").unwrap(),
            Change::parse_drop("page").unwrap(),
        ],
    );
    let s = m.current_schema();
    assert!(s.field_by_name("source").is_some());
    assert!(s.field_by_name("referrer").is_none() && s.field_by_name("page").is_none());
    assert_eq!(m.current_schema_id(), 1);
}

#[test]
fn a_rename_keeps_the_old_json_key_and_moves_aliases_along() {
    let m = apply(&events(), &[Change::parse_alias("ts:event_ts").unwrap()]);
    let m = apply(&m, &[Change::parse_rename("value:amount").unwrap()]);
    assert_eq!(m.properties()["floe.alias.value"], "amount");
    let m = apply(&m, &[Change::parse_rename("event_ts:happened_at").unwrap()]);
    assert_eq!(m.properties()["floe.alias.ts"], "happened_at");
    assert_eq!(m.properties()["floe.alias.event_ts"], "happened_at");
    let m = apply(&m, &[Change::parse_drop_alias("value").unwrap()]);
    assert!(!m.properties().contains_key("floe.alias.value"));
    let e = err(&m, &[Change::parse_drop_alias("value").unwrap()]);
    assert!(e.contains("no such alias"), "{e}");
}
