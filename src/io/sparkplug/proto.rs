//! The Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload`, proto2), written by hand with
//! prost's derive macros: the field numbers and types of eclipse/tahu
//! `sparkplug_b/sparkplug_b.proto`, without the parts an edge node of ours never sends or reads
//! (DataSet, Template, MetaData, extensions). prost skips unknown fields when decoding, so a
//! payload that carries them still decodes. Hand-written, so building needs no `protoc`; the
//! interop tests decode what we send with an independent decoder (pysparkplug) and the unit
//! tests below pin the bytes of a small payload.

/// `Payload`: one Sparkplug message body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the epoch, when the message was made.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0-255; absent on NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// On births (and NDEATH's bdSeq); DATA carries the alias only.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Types of 32 bits or less (signed ones as their two's complement bits).
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    /// 64-bit types and DateTime.
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

/// `Payload.PropertySet`: parallel lists of keys and values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertyValue` (nested property sets left out).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyValueValue", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyValueValue>,
}

/// `Payload.PropertyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueValue {
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    #[prost(float, tag = "5")]
    FloatValue(f32),
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    #[prost(string, tag = "8")]
    StringValue(String),
}

/// Sparkplug datatypes (the `datatype` of a metric, the `type` of a property value).
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_small_payload_has_the_bytes_of_the_specification() {
        // timestamp 1, seq 2, one metric {name "a", alias 3, datatype Int32, int_value 5}:
        // the bytes protoc's encoder gives for the same message.
        let p = Payload {
            timestamp: Some(1),
            metrics: vec![Metric {
                name: Some("a".into()),
                alias: Some(3),
                datatype: Some(datatype::INT32),
                value: Some(MetricValue::IntValue(5)),
                ..Default::default()
            }],
            seq: Some(2),
            ..Default::default()
        };
        let bytes = p.encode_to_vec();
        assert_eq!(
            bytes,
            vec![
                0x08, 0x01, // timestamp = 1
                0x12, 0x09, // metrics, 9 bytes
                0x0a, 0x01, b'a', // name
                0x10, 0x03, // alias
                0x20, 0x03, // datatype
                0x50, 0x05, // int_value
                0x18, 0x02, // seq = 2
            ]
        );
        assert_eq!(Payload::decode(bytes.as_slice()).unwrap(), p);
    }
}
