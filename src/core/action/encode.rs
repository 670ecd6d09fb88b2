//! Engineering value → what is written: the exact reverse of [`crate::core::decode`] (offset,
//! then scale, then the type's range, then the word order), so that reading back what was
//! written decodes to the same value.

use crate::core::decode::{DataType, Encoding, Table};

/// What one write puts on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteData {
    /// Holding registers (FC 06 for one, FC 16 for more).
    Registers(Vec<u16>),
    /// Coils (FC 05 for one, FC 15 for more).
    Coils(Vec<bool>),
}

impl WriteData {
    /// How many addresses the write covers.
    pub fn len(&self) -> u16 {
        match self {
            WriteData::Registers(w) => w.len() as u16,
            WriteData::Coils(b) => b.len() as u16,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Modbus function code the write uses.
    pub fn function_code(&self) -> u8 {
        match self {
            WriteData::Coils(b) if b.len() == 1 => 5,
            WriteData::Coils(_) => 15,
            WriteData::Registers(w) if w.len() == 1 => 6,
            WriteData::Registers(_) => 16,
        }
    }

    /// The words or bits as a list of numbers, for the audit.
    pub fn raw(&self) -> Vec<u16> {
        match self {
            WriteData::Registers(w) => w.clone(),
            WriteData::Coils(b) => b.iter().map(|&x| u16::from(x)).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("the {0} table cannot be written (only coil and holding)")]
    NotWritable(Table),
    #[error("one bit of a register cannot be written on its own")]
    Bit,
    #[error("{value} is not a finite number")]
    NotFinite { value: f64 },
    #[error("{value} gives the raw value {raw}, outside the range of {dtype}")]
    OutOfRange {
        value: f64,
        raw: f64,
        dtype: &'static str,
    },
}

/// The registers or coil state that a device decoding with `enc` reads as `value`.
pub fn encode(enc: &Encoding, value: f64) -> Result<WriteData, EncodeError> {
    if !value.is_finite() {
        return Err(EncodeError::NotFinite { value });
    }
    match enc.table {
        Table::Coil => return Ok(WriteData::Coils(vec![value != 0.0])),
        Table::Holding => {}
        t => return Err(EncodeError::NotWritable(t)),
    }
    if enc.bit.is_some() || enc.dtype == DataType::Bool {
        return Err(EncodeError::Bit);
    }
    let scale = if enc.scale == 0.0 { 1.0 } else { enc.scale };
    let raw = (value - enc.offset) / scale;
    let out_of_range = || EncodeError::OutOfRange {
        value,
        raw,
        dtype: enc.dtype.as_str(),
    };
    let int = |lo: f64, hi: f64| -> Result<f64, EncodeError> {
        let r = raw.round();
        if r < lo || r > hi {
            Err(out_of_range())
        } else {
            Ok(r)
        }
    };
    let words: Vec<u16> = match enc.dtype {
        DataType::U16 => vec![int(0.0, 65_535.0)? as u16],
        DataType::I16 => vec![int(-32_768.0, 32_767.0)? as i16 as u16],
        DataType::U32 => be2(enc, (int(0.0, u32::MAX as f64)? as u32).to_be_bytes()),
        DataType::I32 => be2(
            enc,
            (int(i32::MIN as f64, i32::MAX as f64)? as i32).to_be_bytes(),
        ),
        DataType::F32 => {
            let f = raw as f32;
            if !f.is_finite() {
                return Err(out_of_range());
            }
            be2(enc, f.to_bits().to_be_bytes())
        }
        // 2^53: beyond it an f64 no longer holds every integer.
        DataType::U64 => be4(
            enc,
            (int(0.0, 9_007_199_254_740_992.0)? as u64).to_be_bytes(),
        ),
        DataType::I64 => be4(
            enc,
            (int(-9_007_199_254_740_992.0, 9_007_199_254_740_992.0)? as i64).to_be_bytes(),
        ),
        DataType::F64 => be4(enc, raw.to_bits().to_be_bytes()),
        DataType::Bool => return Err(EncodeError::Bit),
    };
    Ok(WriteData::Registers(words))
}

fn be2(enc: &Encoding, b: [u8; 4]) -> Vec<u16> {
    let be = [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ];
    enc.order.encode(&be).to_vec()
}

fn be4(enc: &Encoding, b: [u8; 8]) -> Vec<u16> {
    let be = [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]),
    ];
    enc.order.encode(&be).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decode::{decode_at, Image, WordOrder};

    fn enc(dtype: DataType, order: WordOrder, scale: f64) -> Encoding {
        Encoding {
            table: Table::Holding,
            dtype,
            order,
            bit: None,
            scale,
            offset: 0.0,
        }
    }

    #[test]
    fn f32_cdab_matches_the_test_vector() {
        let w = encode(&enc(DataType::F32, WordOrder::Cdab, 1.0), 123456.0).unwrap();
        assert_eq!(w, WriteData::Registers(vec![0x2000, 0x47F1]));
        assert_eq!(w.function_code(), 16);
        let w = encode(&enc(DataType::F32, WordOrder::Badc, 1.0), 123456.0).unwrap();
        assert_eq!(w, WriteData::Registers(vec![0xF147, 0x0020]));
        let w = encode(&enc(DataType::F32, WordOrder::Dcba, 1.0), 123456.0).unwrap();
        assert_eq!(w, WriteData::Registers(vec![0x0020, 0xF147]));
    }

    #[test]
    fn scaled_i16_and_u32() {
        let w = encode(&enc(DataType::I16, WordOrder::Abcd, 0.1), -25.3).unwrap();
        assert_eq!(w, WriteData::Registers(vec![(-253i16) as u16]));
        assert_eq!(w.function_code(), 6);
        let w = encode(&enc(DataType::U32, WordOrder::Cdab, 1.0), 70_000.0).unwrap();
        // 70000 = 0x0001_1170: low word first.
        assert_eq!(w, WriteData::Registers(vec![0x1170, 0x0001]));
        let w = encode(&enc(DataType::U32, WordOrder::Abcd, 1.0), 70_000.0).unwrap();
        assert_eq!(w, WriteData::Registers(vec![0x0001, 0x1170]));
    }

    #[test]
    fn what_is_written_decodes_to_the_value() {
        for (dtype, order, scale, offset, v) in [
            (DataType::U16, WordOrder::Abcd, 0.001, 0.0, 4.2),
            (DataType::I16, WordOrder::Abcd, 0.1, -10.0, -3.5),
            (DataType::U32, WordOrder::Dcba, 1.0, 0.0, 4_000_000_000.0),
            (DataType::I32, WordOrder::Cdab, 0.01, 0.0, -12_345.67),
            (DataType::F32, WordOrder::Badc, 2.0, 1.0, 955.5),
            (DataType::F64, WordOrder::Cdab, 1.0, 0.0, 1.0e-3),
            (DataType::I64, WordOrder::Dcba, 1.0, 0.0, -7.0),
        ] {
            let e = Encoding {
                offset,
                ..enc(dtype, order, scale)
            };
            let WriteData::Registers(words) = encode(&e, v).unwrap() else {
                panic!("registers")
            };
            let back = decode_at(
                &e,
                7,
                Image::Registers {
                    start: 7,
                    words: &words,
                },
            )
            .unwrap();
            assert!(
                (back - v).abs() <= scale / 2.0 + 1e-9,
                "{dtype:?}: {back} vs {v}"
            );
        }
    }

    #[test]
    fn refuses_what_cannot_be_written() {
        let e = enc(DataType::U16, WordOrder::Abcd, 1.0);
        assert!(matches!(
            encode(&e, 70_000.0),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(&e, -1.0),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(&e, f64::NAN),
            Err(EncodeError::NotFinite { .. })
        ));
        let input = Encoding {
            table: Table::Input,
            ..e
        };
        assert_eq!(
            encode(&input, 1.0),
            Err(EncodeError::NotWritable(Table::Input))
        );
        let bit = Encoding { bit: Some(3), ..e };
        assert_eq!(encode(&bit, 1.0), Err(EncodeError::Bit));
        let coil = Encoding {
            table: Table::Coil,
            dtype: DataType::Bool,
            ..e
        };
        let w = encode(&coil, 1.0).unwrap();
        assert_eq!(
            (w.clone(), w.function_code()),
            (WriteData::Coils(vec![true]), 5)
        );
    }
}
