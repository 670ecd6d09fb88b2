//! Property tests on everything that parses outside input: the config reader, the register
//! decoder, the operator command parser and the outbox reader. Whatever the input, the answer
//! is a value or an error, never a panic; where a right answer is known, it is checked.

use std::path::Path;

use alsentry::config::Config;
use alsentry::core::command;
use alsentry::core::decode::{decode_bit, decode_registers, DataType, Encoding, Table, WordOrder};
use alsentry::outbox::{Class, NewRecord, Outbox, OutboxOptions};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../config/alsentry.example.toml");
const T0: i64 = 1_795_881_600_000;

/// One random edit of a text: delete, duplicate or replace a span, insert a TOML-ish token.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, String),
    ReplaceChar(usize, char),
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("=".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("[[devices]]\n".to_string()),
        Just("[[rules]]\n".to_string()),
        Just("\"".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(",".to_string()),
        Just("\n".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        Just("nan".to_string()),
        Just("\"0ms\"".to_string()),
        Just("\"99999999999h\"".to_string()),
        Just("65536".to_string()),
        Just("\"{unit:03}\"".to_string()),
        Just("units = \"1-300\"\n".to_string()),
        Just("address = 65535".to_string()),
        Just("type = \"f64\"".to_string()),
        Just("include = [\"/nonexistent\"]\n".to_string()),
        "[a-z_]{1,10}",
        "\\PC{0,8}",
    ]
}

fn edit(len: usize) -> impl Strategy<Value = Edit> {
    let len = len.max(1);
    prop_oneof![
        (0..len, 0..64usize).prop_map(|(a, n)| Edit::Delete(a, n)),
        (0..len, 0..200usize).prop_map(|(a, n)| Edit::Duplicate(a, n)),
        (0..len, token()).prop_map(|(a, s)| Edit::Insert(a, s)),
        (0..len, any::<char>()).prop_map(|(a, c)| Edit::ReplaceChar(a, c)),
    ]
}

/// Applies edits on char boundaries (the reader gets `&str`, so the text stays UTF-8).
fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let n = chars.len();
        match e {
            Edit::Delete(a, k) if n > 0 => {
                let a = a % n;
                let b = (a + k).min(n);
                chars.drain(a..b);
            }
            Edit::Duplicate(a, k) if n > 0 => {
                let a = a % n;
                let b = (a + k).min(n);
                let span: Vec<char> = chars[a..b].to_vec();
                chars.splice(b..b, span);
            }
            Edit::Insert(a, s) => {
                let a = if n == 0 { 0 } else { a % (n + 1) };
                chars.splice(a..a, s.chars());
            }
            Edit::ReplaceChar(a, c) if n > 0 => {
                let a = a % n;
                chars[a] = *c;
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

#[test]
fn the_example_config_itself_loads() {
    // The mutation property below is only meaningful if the unmutated text is valid.
    Config::from_str(Path::new("config/alsentry.example.toml"), EXAMPLE)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn all_encodings() -> Vec<Encoding> {
    let mut v = Vec::new();
    for table in [Table::Holding, Table::Input, Table::Coil, Table::Discrete] {
        for dtype in [
            DataType::Bool,
            DataType::U16,
            DataType::I16,
            DataType::U32,
            DataType::I32,
            DataType::U64,
            DataType::I64,
            DataType::F32,
            DataType::F64,
        ] {
            for order in [
                WordOrder::Abcd,
                WordOrder::Cdab,
                WordOrder::Badc,
                WordOrder::Dcba,
            ] {
                for bit in [None, Some(0), Some(15), Some(200)] {
                    v.push(Encoding {
                        table,
                        dtype,
                        order,
                        bit,
                        scale: 1.0,
                        offset: 0.0,
                    });
                }
            }
        }
    }
    v
}

fn scale_or_offset() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(1.0),
        Just(0.1),
        Just(0.0),
        Just(-1.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(f64::INFINITY),
        Just(f64::NAN),
        any::<f64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary text (mostly TOML-shaped): a config or a list of problems, never a panic.
    #[test]
    fn config_reader_never_panics_on_arbitrary_text(text in "(\\PC|\n|\\[|\\]|=|\"|\\{|\\}|,){0,400}") {
        match Config::from_str(Path::new("fuzz.toml"), &text) {
            Ok(_) => {}
            Err(e) => prop_assert!(!e.problems.is_empty(), "an error with no problem in it"),
        }
    }

    /// The example config, randomly mutated: still Ok or an error that names a problem.
    #[test]
    fn config_reader_never_panics_on_a_mutated_example(edits in proptest::collection::vec(edit(EXAMPLE.chars().count()), 1..6)) {
        let text = apply(EXAMPLE, &edits);
        match Config::from_str(Path::new("mutated.toml"), &text) {
            Ok(cfg) => prop_assert!(!cfg.devices.is_empty() || text.contains("devices")),
            Err(e) => {
                prop_assert!(!e.problems.is_empty());
                // Every problem renders (with its location) without panicking.
                let shown = e.to_string();
                prop_assert!(shown.contains("problem"), "{}", shown);
            }
        }
    }

    /// Any registers × every table/type/order/bit × arbitrary scale and offset: a finite value or
    /// an error. Too few registers is always `Short`; integer types with a sane scale always decode.
    #[test]
    fn decoder_is_total(
        regs in proptest::collection::vec(any::<u16>(), 0..6),
        scale in scale_or_offset(),
        offset in scale_or_offset(),
        bit_value in any::<bool>(),
    ) {
        for mut enc in all_encodings() {
            enc.scale = scale;
            enc.offset = offset;
            if let Ok(v) = decode_registers(&enc, &regs) {
                prop_assert!(v.is_finite(), "{enc:?} {regs:?} gave {v}");
            }
            if regs.len() < usize::from(enc.dtype.registers()) {
                prop_assert!(decode_registers(&enc, &regs).is_err());
            }
            if let Ok(v) = decode_bit(&enc, bit_value) {
                prop_assert!(v.is_finite());
            }
            let integer = !matches!(enc.dtype, DataType::F32 | DataType::F64);
            if integer && scale == 1.0 && offset == 0.0 && regs.len() >= usize::from(enc.dtype.registers()) {
                prop_assert!(decode_registers(&enc, &regs).is_ok(), "{enc:?} {regs:?}");
            }
        }
    }

    /// f32 written in each word order decodes back to itself.
    #[test]
    fn f32_round_trips_in_every_order(v in any::<f32>().prop_filter("finite", |v| v.is_finite())) {
        let be = alsentry::core::decode::f32_be_registers(v);
        for order in [WordOrder::Abcd, WordOrder::Cdab, WordOrder::Badc, WordOrder::Dcba] {
            let enc = Encoding { table: Table::Holding, dtype: DataType::F32, order, bit: None, scale: 1.0, offset: 0.0 };
            let regs = order.encode(&be);
            prop_assert_eq!(decode_registers(&enc, &regs), Ok(f64::from(v)));
        }
    }

    /// Arbitrary bytes on the command topic: a request or an error message, never a panic.
    #[test]
    fn command_parser_is_total_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), now in any::<i64>()) {
        if let Err(e) = command::parse(&bytes, now) {
            prop_assert!(!e.message.is_empty());
        }
    }

    /// JSON-shaped commands with arbitrary field values (wrong types, huge numbers, odd
    /// durations, unknown ops): a request or a refusal that says why.
    #[test]
    fn command_parser_is_total_on_json(
        op in prop_oneof![Just("ack"), Just("shelve"), Just("unshelve"), Just("reset"), Just("out_of_service"), Just("return_to_service"), Just("reload"), Just("explode"), Just("")],
        device in prop_oneof![Just(serde_json::json!("pot-001")), Just(serde_json::json!(null)), Just(serde_json::json!(17)), Just(serde_json::json!([])), "\\PC{0,40}".prop_map(serde_json::Value::from)],
        rule in prop_oneof![Just(serde_json::json!("anode_effect")), Just(serde_json::json!(false)), "\\PC{0,20}".prop_map(serde_json::Value::from)],
        by in prop_oneof![Just(serde_json::json!("shift-a")), Just(serde_json::json!("")), Just(serde_json::json!({})), "\\PC{0,300}".prop_map(serde_json::Value::from)],
        duration in prop_oneof![Just(serde_json::json!("1h")), Just(serde_json::json!("-5m")), Just(serde_json::json!("99999999999999h")), Just(serde_json::json!(i64::MAX)), Just(serde_json::json!(-1)), Just(serde_json::json!(1e300)), "\\PC{0,12}".prop_map(serde_json::Value::from)],
        until in prop_oneof![Just(serde_json::json!(null)), Just(serde_json::json!("2026-11-28T17:00:00Z")), Just(serde_json::json!(i64::MIN)), "\\PC{0,30}".prop_map(serde_json::Value::from)],
        request_id in prop_oneof![Just(serde_json::json!(null)), Just(serde_json::json!(3)), "\\PC{0,80}".prop_map(serde_json::Value::from)],
        now in any::<i64>(),
    ) {
        let v = serde_json::json!({
            "op": op, "device": device, "rule": rule, "by": by,
            "duration": duration, "until": until, "request_id": request_id,
        });
        let bytes = serde_json::to_vec(&v).unwrap();
        match command::parse(&bytes, now) {
            Ok(p) => prop_assert_eq!(p.op.as_str(), op),
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// End to end on disk: records written by the store, then arbitrary bytes appended to the
    /// segment (a torn or garbage tail) and arbitrary bytes in a stray segment: open succeeds
    /// and every record written before the damage is still there, in order.
    #[test]
    fn outbox_open_survives_garbage_in_segment_files(
        tail in proptest::collection::vec(any::<u8>(), 0..4096),
        stray in proptest::collection::vec(any::<u8>(), 0..4096),
        n in 1usize..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        {
            let (mut ob, _) = Outbox::open(dir.path(), OutboxOptions::default(), T0).unwrap();
            for i in 0..n {
                let payload = format!("alarm {i}");
                ids.push(ob.append(NewRecord { class: Class::Alarm, topic: "a/b", payload: payload.as_bytes(), retain: true, qos: 1 }, T0).unwrap());
            }
            ob.flush().unwrap();
        }
        let mut segs: Vec<_> = std::fs::read_dir(dir.path()).unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        prop_assert_eq!(segs.len(), 1);
        let mut bytes = std::fs::read(&segs[0]).unwrap();
        bytes.extend_from_slice(&tail);
        std::fs::write(&segs[0], &bytes).unwrap();
        // A stray segment far after ours, full of garbage (e.g. a half-created file).
        std::fs::write(dir.path().join(format!("{:020}.seg", 1u64 << 40)), &stray).unwrap();

        let (mut ob, report) = Outbox::open(dir.path(), OutboxOptions::default(), T0).unwrap();
        prop_assert!(report.recovered >= n, "{report:?}");
        let got: Vec<u64> = ob.next_unsent(1_000).unwrap().into_iter().map(|r| r.id).collect();
        prop_assert_eq!(&got[..n], &ids[..]);
        // The reopened store still takes new records.
        ob.append(NewRecord { class: Class::Alarm, topic: "a/b", payload: b"after", retain: true, qos: 1 }, T0).unwrap();
    }
}
