//! The compact raw-data payload (`[[mqtt]] data_payload = "compact"`) and the retained
//! metadata message that describes it (docs/MQTT.md, "Compact data"). Pure.
//!
//! The full payload (`alsentry/data/1`) names every tag and repeats its unit in every message.
//! For an uplink paid by the byte the compact form sends only the poll's time, the layout it
//! was written with, and the values in the device's tag order; names, units and register types
//! go once, in a retained message per device (`{device}/data/meta`) whose `layout` hash every
//! compact message carries as `m`, so a consumer sees at once when its meta is stale.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::engine::SampleBatch;
use super::model::Quality;
use super::payload::{Identity, Num};

/// Named by the meta (`payload`); compact messages carry no `schema` field, to stay small.
pub const COMPACT_SCHEMA: &str = "alsentry/data-compact/1";
pub const META_SCHEMA: &str = "alsentry/data-meta/1";

impl Identity {
    /// `{root}/{site}/{area}/{device}/data/compact`
    pub fn compact_data_topic(&self, device: &str) -> String {
        let root = &*self.topic_root;
        [root, &self.site, &self.area, device, "data", "compact"].join("/")
    }

    /// `{root}/{site}/{area}/{device}/data/meta`, retained.
    pub fn data_meta_topic(&self, device: &str) -> String {
        let root = &*self.topic_root;
        [root, &self.site, &self.area, device, "data", "meta"].join("/")
    }
}

/// One tag as the meta describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetaTag {
    pub name: String,
    pub unit: String,
    /// The register type the value was decoded from (`f32`, `u16`, `bool`, ...), before scaling.
    #[serde(rename = "type")]
    pub dtype: String,
}

/// The order and description of a device's tags in compact messages, and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    tags: Vec<MetaTag>,
    hash: String,
}

impl Layout {
    pub fn new(tags: Vec<MetaTag>) -> Layout {
        let hash = layout_hash(&tags);
        Layout { tags, hash }
    }

    /// 8 hex digits: CRC-32 of the compact schema and every tag's name, unit and type, in
    /// order. Devices with the same tags share it; any change to the tags changes it.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn tags(&self) -> &[MetaTag] {
        &self.tags
    }
}

fn layout_hash(tags: &[MetaTag]) -> String {
    let mut h = crc32fast::Hasher::new();
    h.update(COMPACT_SCHEMA.as_bytes());
    for t in tags {
        for part in [&t.name, &t.unit, &t.dtype] {
            // NUL-terminated: ("ab", "c") and ("a", "bc") must not hash alike.
            h.update(part.as_bytes());
            h.update(&[0]);
        }
    }
    format!("{:08x}", h.finalize())
}

/// `alsentry/data-meta/1`: retained on `{device}/data/meta`. Without a timestamp, so the same
/// configuration gives the same bytes and a reload that changes nothing sends nothing again.
#[derive(Debug, Serialize)]
struct MetaPayload<'a> {
    schema: &'static str,
    agent: &'a str,
    device: &'a str,
    layout: &'a str,
    payload: &'static str,
    tags: &'a [MetaTag],
}

pub fn meta_payload(agent: &str, device: &str, layout: &Layout) -> Vec<u8> {
    serde_json::to_vec(&MetaPayload {
        schema: META_SCHEMA,
        agent,
        device,
        layout: &layout.hash,
        payload: COMPACT_SCHEMA,
        tags: &layout.tags,
    })
    .unwrap_or_default()
}

/// The compact form of every device (by device index), and what `mode = "change"` last sent.
#[derive(Debug, Default)]
pub struct CompactData {
    devices: Vec<(String, Arc<Layout>)>,
    /// (device, tag) -> (value, good) last published: the same deadband rule as
    /// [`super::payload::DataFilter`], kept apart so the two forms never share state.
    last: HashMap<(u32, u16), (f64, bool)>,
}

impl CompactData {
    /// `devices`: (name, layout) in the configuration's device order.
    pub fn new(devices: Vec<(String, Arc<Layout>)>) -> CompactData {
        CompactData {
            devices,
            last: HashMap::new(),
        }
    }

    pub fn devices(&self) -> impl Iterator<Item = (&str, &Layout)> {
        self.devices.iter().map(|(n, l)| (n.as_str(), &**l))
    }

    /// The device's name and its compact message for `batch`; None when nothing is to be
    /// published (every value within the deadband, or an unknown device).
    ///
    /// `{"ts":<ms>,"m":"<layout>","v":[...]}` when the batch holds every tag in order;
    /// otherwise `"i":[tag indices]` says which tags `v` holds. `"q"` (only when a value is
    /// not good) maps a tag index to its quality: `{"3":"bad:timeout"}`.
    pub fn payload(
        &mut self,
        batch: &SampleBatch,
        deadband: Option<f64>,
    ) -> Option<(&str, Vec<u8>)> {
        let (name, layout) = self.devices.get(batch.device as usize)?;
        let mut picked: Vec<(u16, f64, Quality)> = Vec::with_capacity(batch.values.len());
        for &(tag, v, q) in &batch.values {
            if usize::from(tag) >= layout.tags.len() {
                continue;
            }
            let good = q.is_good() && v.is_finite();
            if let Some(db) = deadband {
                let key = (batch.device, tag);
                match self.last.get(&key) {
                    Some(&(pv, pg)) if pg == good && (!good || (v - pv).abs() <= db) => continue,
                    _ => {
                        self.last.insert(key, (v, good));
                    }
                }
            }
            picked.push((tag, v, q));
        }
        if picked.is_empty() {
            return None;
        }
        Some((
            name,
            write_compact(batch.ts, &layout.hash, &picked, layout.tags.len()),
        ))
    }

    /// After a reload: the next message of each device carries every value again.
    pub fn forget_sent(&mut self) {
        self.last.clear();
    }
}

/// `picked`: (tag index, value, quality) in tag order; `n_tags`: tags in the layout.
fn write_compact(ts: i64, hash: &str, picked: &[(u16, f64, Quality)], n_tags: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + 12 * picked.len());
    out.extend_from_slice(b"{\"ts\":");
    out.extend_from_slice(ts.to_string().as_bytes());
    out.extend_from_slice(b",\"m\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.push(b'"');
    let dense = picked.len() == n_tags
        && picked
            .iter()
            .enumerate()
            .all(|(i, p)| usize::from(p.0) == i);
    if !dense {
        out.extend_from_slice(b",\"i\":[");
        for (k, (tag, _, _)) in picked.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(tag.to_string().as_bytes());
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"v\":[");
    for (k, &(_, v, _)) in picked.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        write_number(&mut out, v);
    }
    out.push(b']');
    let mut first_bad = true;
    for (tag, _, q) in picked {
        if q.is_good() {
            continue;
        }
        out.extend_from_slice(if first_bad { b",\"q\":{\"" } else { b",\"" });
        first_bad = false;
        out.extend_from_slice(tag.to_string().as_bytes());
        out.extend_from_slice(b"\":");
        // Labels are ASCII words (`bad:exception_02`), but escape them like every string.
        let _ = serde_json::to_writer(&mut out, &q.label());
    }
    if !first_bad {
        out.push(b'}');
    }
    out.push(b'}');
    out
}

/// Like [`Num`], and an integral value without its `.0` (`1234`, not `1234.0`): the shortest
/// text that reads back to the same number. Not finite: `null`.
fn write_number(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        out.extend_from_slice(b"null");
    } else if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        out.extend_from_slice((v as i64).to_string().as_bytes());
    } else {
        let _ = serde_json::to_writer(&mut *out, &Num(v));
    }
}

/// The reference decoder, for consumers to copy and for the tests: a compact message and the
/// meta it names, back to the `values` object of the full payload
/// (`{"voltage":{"v":4.1,"q":"good","unit":"V"},...}`, in tag order). Refuses a message whose
/// `m` is not the meta's `layout` (a stale meta: wait for the new one). Values come back as
/// floats (`3`, written without its `.0`, reads back as `3.0`).
pub fn expand(
    meta: &[u8],
    compact: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use serde_json::Value;
    let meta: Value = serde_json::from_slice(meta).map_err(|e| format!("meta: {e}"))?;
    let msg: Value = serde_json::from_slice(compact).map_err(|e| format!("compact: {e}"))?;
    if meta["schema"] != META_SCHEMA {
        return Err(format!("not a data meta: {}", meta["schema"]));
    }
    if msg["m"] != meta["layout"] {
        return Err(format!(
            "stale meta: the message has layout {}, the meta {}",
            msg["m"], meta["layout"]
        ));
    }
    let tags = meta["tags"].as_array().ok_or("meta without tags")?;
    let values = msg["v"].as_array().ok_or("compact without v")?;
    let indices: Vec<usize> = match msg.get("i") {
        None => (0..values.len()).collect(),
        Some(i) => i
            .as_array()
            .ok_or("i is not an array")?
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize).ok_or("i holds a non-index"))
            .collect::<Result<_, _>>()?,
    };
    if indices.len() != values.len() {
        return Err("i and v differ in length".into());
    }
    let mut out = serde_json::Map::new();
    for (&i, v) in indices.iter().zip(values) {
        let tag = tags
            .get(i)
            .ok_or_else(|| format!("tag index {i} not in the meta"))?;
        let name = tag["name"].as_str().ok_or("tag without name")?;
        let q = msg["q"]
            .get(i.to_string())
            .cloned()
            .unwrap_or_else(|| Value::from("good"));
        let mut entry = serde_json::Map::new();
        // Every value is a float: `3` and `3.0` are the same reading.
        entry.insert("v".into(), v.as_f64().map_or(Value::Null, Value::from));
        entry.insert("q".into(), q);
        entry.insert("unit".into(), tag["unit"].clone());
        out.insert(name.to_string(), Value::Object(entry));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::BadReason;
    use crate::core::payload::{DataFilter, DataTags};

    fn tag(name: &str, unit: &str, dtype: &str) -> MetaTag {
        MetaTag {
            name: name.into(),
            unit: unit.into(),
            dtype: dtype.into(),
        }
    }

    fn layout() -> Arc<Layout> {
        Arc::new(Layout::new(vec![
            tag("voltage", "V", "f32"),
            tag("bath\\temp", "°C", "i16"),
            tag("status", "", "u16"),
        ]))
    }

    fn compact(layout: Arc<Layout>) -> CompactData {
        CompactData::new(vec![("pot \"7\"".into(), layout)])
    }

    fn full_tags(l: &Layout) -> DataTags {
        let names: Vec<(String, String)> = l
            .tags()
            .iter()
            .map(|t| (t.name.clone(), t.unit.clone()))
            .collect();
        DataTags::new("pot \"7\"", &names)
    }

    const F32_4_1: f64 = 4.099_999_904_632_568;

    fn batch(ts: i64, values: Vec<(u16, f64, Quality)>) -> SampleBatch {
        SampleBatch {
            device: 0,
            ts,
            values,
        }
    }

    #[test]
    fn a_poll_is_the_time_the_layout_and_the_values_in_tag_order() {
        let l = layout();
        let mut c = compact(l.clone());
        let b = batch(
            1_764_345_953_123,
            vec![
                (0, F32_4_1, Quality::Good),
                (1, 957.3, Quality::Good),
                (2, 1234.0, Quality::Good),
            ],
        );
        let (device, out) = c.payload(&b, None).unwrap();
        assert_eq!(device, "pot \"7\"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                r#"{{"ts":1764345953123,"m":"{}","v":[4.1,957.3,1234]}}"#,
                l.hash()
            )
        );
    }

    #[test]
    fn bad_values_are_null_with_their_quality_by_tag_index() {
        let l = layout();
        let mut c = compact(l.clone());
        let b = batch(
            5,
            vec![
                (0, 4.125, Quality::Good),
                (1, f64::NAN, Quality::Bad(BadReason::Exception(2))),
                (2, f64::NAN, Quality::Bad(BadReason::Timeout)),
            ],
        );
        let text = String::from_utf8(c.payload(&b, None).unwrap().1).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"ts":5,"m":"{}","v":[4.125,null,null],"q":{{"1":"bad:exception_02","2":"bad:timeout"}}}}"#,
                l.hash()
            )
        );
    }

    #[test]
    fn a_partial_batch_names_its_tags_and_unknown_tags_are_skipped() {
        let l = layout();
        let mut c = compact(l.clone());
        let b = batch(0, vec![(2, 7.0, Quality::Good), (9, 1.0, Quality::Good)]);
        let text = String::from_utf8(c.payload(&b, None).unwrap().1).unwrap();
        assert_eq!(
            text,
            format!(r#"{{"ts":0,"m":"{}","i":[2],"v":[7]}}"#, l.hash())
        );
        let other = batch(0, vec![]);
        assert!(c.payload(&other, None).is_none());
        let unknown = SampleBatch {
            device: 3,
            ..batch(0, vec![(0, 1.0, Quality::Good)])
        };
        assert!(c.payload(&unknown, None).is_none());
    }

    #[test]
    fn numbers_are_in_their_shortest_form() {
        let n = |v: f64| {
            let mut out = Vec::new();
            write_number(&mut out, v);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(n(F32_4_1), "4.1");
        assert_eq!(n(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(n(502.0), "502");
        assert_eq!(n(-3.0), "-3");
        assert_eq!(n(4_294_967_295.0), "4294967295");
        assert_eq!(n(-0.0), "-0.0");
        assert_eq!(n(1e20), "1e+20");
        assert_eq!(n(f64::INFINITY), "null");
        // An f64 reads back to its bits, a float32 to the float32 (as in the full payload).
        for v in [0.1 + 0.2, 502.0, -3.0, 1e20, -0.0] {
            let back: f64 = serde_json::from_str(&n(v)).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v}");
        }
        let back: f64 = serde_json::from_str(&n(F32_4_1)).unwrap();
        assert_eq!(back as f32, 4.1f32);
    }

    #[test]
    fn the_layout_hash_changes_with_any_tag_and_not_with_the_device() {
        let a = Layout::new(vec![
            tag("voltage", "V", "f32"),
            tag("current", "kA", "f32"),
        ]);
        let same = Layout::new(vec![
            tag("voltage", "V", "f32"),
            tag("current", "kA", "f32"),
        ]);
        assert_eq!(a.hash(), same.hash());
        assert_eq!(a.hash().len(), 8);
        for changed in [
            vec![tag("current", "kA", "f32"), tag("voltage", "V", "f32")],
            vec![tag("voltage", "mV", "f32"), tag("current", "kA", "f32")],
            vec![tag("voltage", "V", "f64"), tag("current", "kA", "f32")],
            vec![tag("voltage", "V", "f32")],
            vec![tag("voltag", "eV", "f32"), tag("current", "kA", "f32")],
        ] {
            assert_ne!(a.hash(), Layout::new(changed).hash());
        }
        let meta = |device| meta_payload("gw", device, &a);
        let m: serde_json::Value = serde_json::from_slice(&meta("pot-001")).unwrap();
        assert_eq!(m["layout"], a.hash());
        assert_eq!(
            meta("pot-001"),
            meta("pot-001"),
            "no timestamp: the same bytes"
        );
    }

    #[test]
    fn the_meta_names_the_tags_in_order_with_units_and_types() {
        let l = layout();
        let text = String::from_utf8(meta_payload("gw", "pot \"7\"", &l)).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"schema":"alsentry/data-meta/1","agent":"gw","device":"pot \"7\"","layout":"{}","payload":"alsentry/data-compact/1","tags":[{{"name":"voltage","unit":"V","type":"f32"}},{{"name":"bath\\temp","unit":"°C","type":"i16"}},{{"name":"status","unit":"","type":"u16"}}]}}"#,
                l.hash()
            )
        );
    }

    /// Round trip: the compact message and its meta give back exactly the `values` of the full
    /// payload of the same batches, in every mode, good and bad, dense and partial.
    #[test]
    fn compact_and_meta_expand_to_the_full_payloads_values() {
        let l = layout();
        let meta = meta_payload("gw", "pot \"7\"", &l);
        let tags = full_tags(&l);
        let batches = [
            batch(
                0,
                vec![
                    (0, F32_4_1, Quality::Good),
                    (1, -12.5, Quality::Good),
                    (2, 3.0, Quality::Good),
                ],
            ),
            batch(
                1,
                vec![
                    (0, 4.2, Quality::Good),
                    (1, f64::NAN, Quality::Bad(BadReason::Timeout)),
                    (2, 3.0, Quality::Good),
                ],
            ),
            batch(
                2,
                vec![(1, 0.001, Quality::Good), (2, 65_535.0, Quality::Good)],
            ),
            batch(
                3,
                vec![
                    (0, 4.21, Quality::Good),
                    (1, 0.001, Quality::Good),
                    (2, 3.0, Quality::Good),
                ],
            ),
        ];
        for deadband in [None, Some(0.05)] {
            let (mut full, mut c) = (DataFilter::default(), compact(l.clone()));
            for b in &batches {
                let f = full.payload("gw", &tags, b, deadband);
                let k = c.payload(b, deadband).map(|(_, p)| p);
                // The same deadband rule: both publish, or neither.
                assert_eq!(f.is_some(), k.is_some(), "{deadband:?} at {}", b.ts);
                let (Some(f), Some(k)) = (f, k) else { continue };
                let f: serde_json::Value = serde_json::from_slice(&f).unwrap();
                let back = expand(&meta, &k).unwrap();
                assert_eq!(
                    serde_json::Value::Object(back),
                    f["values"],
                    "{deadband:?} at {}: {}",
                    b.ts,
                    String::from_utf8_lossy(&k)
                );
            }
        }
    }

    #[test]
    fn a_message_under_another_layout_is_refused_as_stale() {
        let old = layout();
        let new = Layout::new(vec![tag("voltage", "V", "f32")]);
        let mut c = compact(old);
        let k = c
            .payload(&batch(0, vec![(0, 1.0, Quality::Good)]), None)
            .unwrap()
            .1;
        let e = expand(&meta_payload("gw", "pot", &new), &k).unwrap_err();
        assert!(e.starts_with("stale meta"), "{e}");
    }

    #[test]
    fn a_reload_sends_every_value_again_in_change_mode() {
        let mut c = compact(layout());
        let b = batch(0, vec![(0, 4.2, Quality::Good)]);
        assert!(c.payload(&b, Some(0.1)).is_some());
        assert!(c.payload(&b, Some(0.1)).is_none());
        c.forget_sent();
        assert!(c.payload(&b, Some(0.1)).is_some());
    }

    #[test]
    fn topics_sit_under_the_data_topic() {
        let who = Identity {
            topic_root: "alsentry".into(),
            agent: "gw".into(),
            site: "s".into(),
            area: "a".into(),
        };
        assert_eq!(
            who.compact_data_topic("pot-001"),
            "alsentry/s/a/pot-001/data/compact"
        );
        assert_eq!(
            who.data_meta_topic("pot-001"),
            "alsentry/s/a/pot-001/data/meta"
        );
    }
}
