//! Property tests: arbitrary bytes and objects give a row or an error, never a panic or an
//! invalid batch.

use super::*;
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        "[a-zA-Z0-9 é\\\\\"]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z_A-Z]{1,8}", inner), 0..5).prop_map(|kv| {
                let members: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_string()),
        Just("b".to_string()),
        Just("i".to_string()),
        Just("d".to_string()),
        Just("dec".to_string()),
        Just("tstz".to_string()),
        Just("s".to_string()),
        Just("u".to_string()),
        Just("st".to_string()),
        Just("lst".to_string()),
        Just("m".to_string()),
        Just("rlst".to_string()),
        Just("dt".to_string()),
        Just("fx".to_string()),
        "[a-z]{1,4}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut d = decoder();
        let before = d.len();
        match d.decode(&bytes, &META) {
            Ok(()) => prop_assert_eq!(d.len(), before + 1),
            Err(e) => { prop_assert_eq!(d.len(), before); prop_assert!(!e.message.is_empty()); }
        }
        let batch = d.finish();
        batch.columns().iter().for_each(|c| c.to_data().validate_full().unwrap());
    }

    #[test]
    fn arbitrary_objects_give_a_row_or_an_error_and_valid_batches(
        members in prop::collection::vec((field_name(), json_value()), 0..8),
        good_first in any::<bool>(),
    ) {
        let body: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
            .collect();
        let payload = format!("{{{}}}", body.join(","));
        let mut d = decoder();
        if good_first {
            d.decode(br#"{"id":0,"lst":[1],"st":{"a":"x"},"m":{"k":1},"rlst":[{"x":1}]}"#, &META).unwrap();
        }
        let before = d.len();
        let ok = d.decode(payload.as_bytes(), &META).is_ok();
        prop_assert_eq!(d.len(), before + ok as usize);
        d.decode(br#"{"id":9,"lst":[2],"st":{"a":"y"},"m":{"j":2},"rlst":[]}"#, &META).unwrap();
        let batch = d.finish();
        prop_assert_eq!(batch.num_rows(), before + ok as usize + 1);
        for c in batch.columns() {
            c.to_data().validate_full().unwrap();
        }
        let last = batch.num_rows() - 1;
        prop_assert_eq!(cell(&batch, "id", last), "9");
        prop_assert_eq!(cell(&batch, "lst", last), "[2]");
    }
}
