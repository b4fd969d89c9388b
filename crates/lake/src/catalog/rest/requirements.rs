//! The requirements of a REST commit: what makes it a compare-and-swap on the metadata it was
//! built on.

use std::collections::BTreeSet;

use iceberg::spec::TableMetadata;
use iceberg::{TableRequirement, TableUpdate};

/// The requirements that make a commit of `updates` on `base` a compare-and-swap, as Iceberg
/// Java's `UpdateRequirements.forUpdateTable` derives them, plus `main` always: the table is
/// the same table, and every ref the commit sets (and `main`, which every floe commit reads
/// its state from) still points where it did; a new schema or spec was built on the current
/// last ids, a default changed from the current one.
pub(crate) fn requirements(base: &TableMetadata, updates: &[TableUpdate]) -> Vec<TableRequirement> {
    let mut out = vec![TableRequirement::UuidMatch { uuid: base.uuid() }];
    let mut refs: BTreeSet<String> = BTreeSet::new();
    let mut assert_ref = |name: &str, out: &mut Vec<TableRequirement>| {
        if refs.insert(name.to_string()) {
            out.push(TableRequirement::RefSnapshotIdMatch {
                r#ref: name.to_string(),
                snapshot_id: base.snapshot_for_ref(name).map(|r| r.snapshot_id()),
            });
        }
    };
    assert_ref(iceberg::spec::MAIN_BRANCH, &mut out);
    let mut once: BTreeSet<&'static str> = BTreeSet::new();
    for u in updates {
        let req = match u {
            TableUpdate::SetSnapshotRef { ref_name, .. } => {
                assert_ref(ref_name.as_str(), &mut out);
                None
            }
            TableUpdate::AddSchema { .. } => Some((
                "field-id",
                TableRequirement::LastAssignedFieldIdMatch {
                    last_assigned_field_id: base.last_column_id(),
                },
            )),
            TableUpdate::SetCurrentSchema { .. } | TableUpdate::RemoveSchemas { .. } => Some((
                "schema",
                TableRequirement::CurrentSchemaIdMatch {
                    current_schema_id: base.current_schema_id(),
                },
            )),
            TableUpdate::AddSpec { .. } => Some((
                "partition-id",
                TableRequirement::LastAssignedPartitionIdMatch {
                    last_assigned_partition_id: base.last_partition_id(),
                },
            )),
            TableUpdate::SetDefaultSpec { .. } | TableUpdate::RemovePartitionSpecs { .. } => {
                Some((
                    "spec",
                    TableRequirement::DefaultSpecIdMatch {
                        default_spec_id: base.default_partition_spec_id(),
                    },
                ))
            }
            TableUpdate::SetDefaultSortOrder { .. } => Some((
                "sort-order",
                TableRequirement::DefaultSortOrderIdMatch {
                    default_sort_order_id: base.default_sort_order_id(),
                },
            )),
            _ => None,
        };
        if let Some((key, r)) = req
            && once.insert(key)
        {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use iceberg::spec::{
        MAIN_BRANCH, NestedField, Operation, PrimitiveType, Schema, Snapshot, Summary, Type,
    };

    fn table() -> TableMetadata {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        let creation = iceberg::TableCreation::builder()
            .name("t".into())
            .location("file:///w/t".into())
            .schema(schema)
            .build();
        iceberg::spec::TableMetadataBuilder::from_table_creation(creation)
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    fn append(base: &TableMetadata, id: i64) -> iceberg::spec::TableMetadataBuildResult {
        let snapshot = Snapshot::builder()
            .with_snapshot_id(id)
            .with_parent_snapshot_id(base.current_snapshot_id())
            .with_sequence_number(base.next_sequence_number())
            .with_timestamp_ms(base.last_updated_ms() + 1)
            .with_manifest_list(format!("file:///w/t/metadata/snap-{id}.avro"))
            .with_summary(Summary {
                operation: Operation::Append,
                additional_properties: HashMap::new(),
            })
            .with_schema_id(base.current_schema_id())
            .build();
        let mut props = HashMap::new();
        props.insert("floe.offsets.g".to_string(), format!("{id}"));
        base.clone()
            .into_builder(None)
            .set_branch_snapshot(snapshot, MAIN_BRANCH)
            .unwrap()
            .set_properties(props)
            .unwrap()
            .build()
            .unwrap()
    }

    fn holds(reqs: &[TableRequirement], m: &TableMetadata) -> bool {
        reqs.iter().all(|r| r.check(Some(m)).is_ok())
    }

    #[test]
    fn a_commit_requires_the_main_it_was_built_on() {
        let empty = table();
        let first = append(&empty, 1);
        let reqs = requirements(&empty, &first.changes);
        assert!(
            reqs.contains(&TableRequirement::RefSnapshotIdMatch {
                r#ref: MAIN_BRANCH.into(),
                snapshot_id: None
            }),
            "{reqs:?}"
        );
        assert!(reqs.contains(&TableRequirement::UuidMatch { uuid: empty.uuid() }));
        assert!(holds(&reqs, &empty));
        // Another writer committed first: the same commit must be refused.
        let other = append(&empty, 2).metadata;
        assert!(!holds(&reqs, &other));

        // A commit of properties alone still asserts main: a state commit on a stale base
        // is refused too.
        let base = first.metadata;
        let state = base
            .clone()
            .into_builder(None)
            .set_properties(HashMap::from([("floe.offsets.g".into(), "x".into())]))
            .unwrap()
            .build()
            .unwrap();
        let reqs = requirements(&base, &state.changes);
        assert!(holds(&reqs, &base));
        assert!(!holds(&reqs, &append(&base, 3).metadata));
    }

    #[test]
    fn a_schema_change_requires_the_schema_it_was_built_on() {
        let base = table();
        let schema = Schema::builder()
            .with_schema_id(1)
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "x", Type::Primitive(PrimitiveType::String)).into(),
            ])
            .build()
            .unwrap();
        let evolved = base
            .clone()
            .into_builder(None)
            .add_current_schema(schema.clone())
            .unwrap()
            .build()
            .unwrap();
        let reqs = requirements(&base, &evolved.changes);
        assert!(reqs.contains(&TableRequirement::LastAssignedFieldIdMatch {
            last_assigned_field_id: 1
        }));
        assert!(reqs.contains(&TableRequirement::CurrentSchemaIdMatch {
            current_schema_id: 0
        }));
        assert!(holds(&reqs, &base));
        assert!(!holds(&reqs, &evolved.metadata));
        // Serialized with the REST spec's names.
        let json = serde_json::to_value(&reqs).unwrap();
        let kinds: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"assert-ref-snapshot-id"), "{kinds:?}");
        assert!(
            kinds.contains(&"assert-last-assigned-field-id"),
            "{kinds:?}"
        );
    }
}
