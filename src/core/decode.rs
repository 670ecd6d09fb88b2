//! Registers → typed, scaled values. Pure: one function per concern, table-tested.
//!
//! Word orders are named by the byte permutation of a 32-bit value whose big-endian bytes are
//! `A B C D`, checked against the test vector 123456.0f32 = 0x47F12000 (docs/STANDARDS.md 4.4):
//! ABCD = [0x47F1, 0x2000], CDAB = [0x2000, 0x47F1], BADC = [0xF147, 0x0020],
//! DCBA = [0x0020, 0xF147]. 64-bit values extend the same rule: ABCD keeps the registers
//! big-endian, CDAB reverses the register order, BADC swaps bytes within each register, and
//! DCBA does both.

use std::fmt;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Coil,
    Discrete,
    Holding,
    Input,
}

impl Table {
    pub const NAMES: &'static str = "coil, discrete, holding, input";

    pub fn parse(s: &str) -> Option<Table> {
        match s {
            "coil" => Some(Table::Coil),
            "discrete" => Some(Table::Discrete),
            "holding" => Some(Table::Holding),
            "input" => Some(Table::Input),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }

    /// Bit tables (coils, discrete inputs) are read 1 bit per address.
    pub fn is_bits(&self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The most addresses one read may cover (Modbus application protocol 1.1b3).
    pub fn max_quantity(&self) -> u16 {
        if self.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// FC 03/04: at most 125 registers per read.
pub const MAX_READ_REGISTERS: u16 = 125;
/// FC 01/02: at most 2000 bits per read.
pub const MAX_READ_BITS: u16 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DataType {
    pub const NAMES: &'static str = "bool, u16, i16, u32, i32, u64, i64, f32, f64";

    pub fn parse(s: &str) -> Option<DataType> {
        Some(match s {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
        }
    }

    /// Registers occupied in a register table (a bool in a register table is one bit of one register).
    pub fn registers(&self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }
}

/// Byte permutation of multi-register values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WordOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl WordOrder {
    pub const NAMES: &'static str = "ABCD, CDAB, BADC, DCBA";

    pub fn parse(s: &str) -> Option<WordOrder> {
        match s {
            "ABCD" => Some(WordOrder::Abcd),
            "CDAB" => Some(WordOrder::Cdab),
            "BADC" => Some(WordOrder::Badc),
            "DCBA" => Some(WordOrder::Dcba),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
            WordOrder::Badc => "BADC",
            WordOrder::Dcba => "DCBA",
        }
    }

    /// Puts registers as read from the wire into big-endian (ABCD) order.
    fn normalise<const N: usize>(&self, regs: &[u16; N]) -> [u16; N] {
        let mut out = *regs;
        if matches!(self, WordOrder::Cdab | WordOrder::Dcba) {
            out.reverse();
        }
        if matches!(self, WordOrder::Badc | WordOrder::Dcba) {
            for r in &mut out {
                *r = r.swap_bytes();
            }
        }
        out
    }

    /// The inverse of reading: the registers a device would serve for big-endian bytes.
    /// Used by the simulator and by tests.
    pub fn encode<const N: usize>(&self, be_regs: &[u16; N]) -> [u16; N] {
        // Reversal and byte swap commute and are their own inverses.
        self.normalise(be_regs)
    }
}

/// How one tag is read out of its registers or bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Encoding {
    pub table: Table,
    pub dtype: DataType,
    pub order: WordOrder,
    /// One bit (0 = least significant) of a 16-bit register.
    pub bit: Option<u8>,
    pub scale: f64,
    pub offset: f64,
}

impl Encoding {
    /// Addresses this tag occupies in its table.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.dtype.registers()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not enough registers: need {need}, got {got}")]
    Short { need: usize, got: usize },
    #[error("value is not a finite number")]
    NotFinite,
}

/// Decodes one register-table tag from the registers starting at its address.
pub fn decode_registers(enc: &Encoding, regs: &[u16]) -> Result<f64, DecodeError> {
    let need = usize::from(enc.dtype.registers());
    if regs.len() < need {
        return Err(DecodeError::Short {
            need,
            got: regs.len(),
        });
    }
    if let Some(bit) = enc.bit {
        return Ok(f64::from((regs[0] >> (bit & 15)) & 1));
    }
    let raw = match enc.dtype {
        DataType::Bool => f64::from(u8::from(regs[0] != 0)),
        DataType::U16 => f64::from(regs[0]),
        DataType::I16 => f64::from(regs[0] as i16),
        DataType::U32 | DataType::I32 | DataType::F32 => {
            let r = enc.order.normalise(&[regs[0], regs[1]]);
            let bits = (u32::from(r[0]) << 16) | u32::from(r[1]);
            match enc.dtype {
                DataType::U32 => f64::from(bits),
                DataType::I32 => f64::from(bits as i32),
                _ => f64::from(f32::from_bits(bits)),
            }
        }
        DataType::U64 | DataType::I64 | DataType::F64 => {
            let r = enc.order.normalise(&[regs[0], regs[1], regs[2], regs[3]]);
            let bits = r.iter().fold(0u64, |acc, w| (acc << 16) | u64::from(*w));
            match enc.dtype {
                DataType::U64 => bits as f64,
                DataType::I64 => (bits as i64) as f64,
                _ => f64::from_bits(bits),
            }
        }
    };
    scale(enc, raw)
}

/// Decodes one bit-table tag (coil or discrete input).
pub fn decode_bit(enc: &Encoding, bit: bool) -> Result<f64, DecodeError> {
    scale(enc, f64::from(u8::from(bit)))
}

fn scale(enc: &Encoding, raw: f64) -> Result<f64, DecodeError> {
    if !raw.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    let v = raw * enc.scale + enc.offset;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(DecodeError::NotFinite)
    }
}

/// Big-endian registers of a value, for the simulator and tests.
pub fn f32_be_registers(v: f32) -> [u16; 2] {
    let b = v.to_bits();
    [(b >> 16) as u16, b as u16]
}

pub fn f64_be_registers(v: f64) -> [u16; 4] {
    let b = v.to_bits();
    [
        (b >> 48) as u16,
        (b >> 32) as u16,
        (b >> 16) as u16,
        b as u16,
    ]
}

/// What one read returned, starting at address `start` of its table: registers, or bits of a
/// coil or discrete table. A simulator's whole table is an image that starts at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image<'a> {
    Registers { start: u16, words: &'a [u16] },
    Bits { start: u16, bits: &'a [bool] },
}

/// Decodes the tag at `address` out of `image`: the one decoding of every sample source (live
/// reads, simulator images). An address outside the image is a short read.
pub fn decode_at(enc: &Encoding, address: u16, image: Image<'_>) -> Result<f64, DecodeError> {
    match image {
        Image::Registers { start, words } => {
            let at = address.checked_sub(start).map(usize::from);
            decode_registers(enc, at.and_then(|o| words.get(o..)).unwrap_or(&[]))
        }
        Image::Bits { start, bits } => {
            let at = address.checked_sub(start).map(usize::from);
            match at.and_then(|o| bits.get(o)) {
                Some(b) => decode_bit(enc, *b),
                None => Err(DecodeError::Short { need: 1, got: 0 }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(dtype: DataType, order: WordOrder) -> Encoding {
        Encoding {
            table: Table::Holding,
            dtype,
            order,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    /// The reference vector of docs/STANDARDS.md 4.4 / libmodbus unit tests.
    #[test]
    fn f32_test_vector_in_every_order() {
        let cases = [
            (WordOrder::Abcd, [0x47F1, 0x2000]),
            (WordOrder::Cdab, [0x2000, 0x47F1]),
            (WordOrder::Badc, [0xF147, 0x0020]),
            (WordOrder::Dcba, [0x0020, 0xF147]),
        ];
        for (order, regs) in cases {
            let v = decode_registers(&enc(DataType::F32, order), &regs).unwrap();
            assert_eq!(v, 123456.0, "{order:?}");
            assert_eq!(order.encode(&f32_be_registers(123456.0)), regs, "{order:?}");
        }
    }

    #[test]
    fn integers_32_bit_every_order() {
        // 0x01020304 = 16909060
        let cases = [
            (WordOrder::Abcd, [0x0102, 0x0304]),
            (WordOrder::Cdab, [0x0304, 0x0102]),
            (WordOrder::Badc, [0x0201, 0x0403]),
            (WordOrder::Dcba, [0x0403, 0x0201]),
        ];
        for (order, regs) in cases {
            assert_eq!(
                decode_registers(&enc(DataType::U32, order), &regs).unwrap(),
                16909060.0
            );
        }
        // -2 as i32 in ABCD and CDAB
        assert_eq!(
            decode_registers(&enc(DataType::I32, WordOrder::Abcd), &[0xFFFF, 0xFFFE]).unwrap(),
            -2.0
        );
        assert_eq!(
            decode_registers(&enc(DataType::I32, WordOrder::Cdab), &[0xFFFE, 0xFFFF]).unwrap(),
            -2.0
        );
    }

    #[test]
    fn sixty_four_bit_types_every_order() {
        let be = [0x0102u16, 0x0304, 0x0506, 0x0708];
        let expected = 0x0102_0304_0506_0708u64 as f64;
        for order in [
            WordOrder::Abcd,
            WordOrder::Cdab,
            WordOrder::Badc,
            WordOrder::Dcba,
        ] {
            let wire = order.encode(&be);
            assert_eq!(
                decode_registers(&enc(DataType::U64, order), &wire).unwrap(),
                expected
            );
            let f = order.encode(&f64_be_registers(-1234.5678));
            assert_eq!(
                decode_registers(&enc(DataType::F64, order), &f).unwrap(),
                -1234.5678
            );
            let i = order.encode(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFFF6]);
            assert_eq!(
                decode_registers(&enc(DataType::I64, order), &i).unwrap(),
                -10.0
            );
        }
        assert_eq!(
            WordOrder::Cdab.encode(&be),
            [0x0708, 0x0506, 0x0304, 0x0102]
        );
        assert_eq!(
            WordOrder::Badc.encode(&be),
            [0x0201, 0x0403, 0x0605, 0x0807]
        );
    }

    #[test]
    fn sixteen_bit_types_scale_and_offset() {
        let mut e = enc(DataType::I16, WordOrder::Abcd);
        e.scale = 0.1;
        let v = decode_registers(&e, &[9605]).unwrap();
        assert!((v - 960.5).abs() < 1e-9);
        assert!((decode_registers(&e, &[(-250i16) as u16]).unwrap() + 25.0).abs() < 1e-9);
        let mut u = enc(DataType::U16, WordOrder::Abcd);
        u.scale = 0.01;
        u.offset = -10.0;
        assert!((decode_registers(&u, &[65535]).unwrap() - 645.35).abs() < 1e-9);
    }

    #[test]
    fn bit_of_register_and_bit_tables() {
        let mut e = enc(DataType::Bool, WordOrder::Abcd);
        e.bit = Some(3);
        assert_eq!(decode_registers(&e, &[0b1000]).unwrap(), 1.0);
        assert_eq!(decode_registers(&e, &[0b0111]).unwrap(), 0.0);
        e.bit = Some(15);
        assert_eq!(decode_registers(&e, &[0x8000]).unwrap(), 1.0);
        let coil = Encoding {
            table: Table::Coil,
            ..enc(DataType::Bool, WordOrder::Abcd)
        };
        assert_eq!(decode_bit(&coil, true).unwrap(), 1.0);
        assert_eq!(coil.width(), 1);
    }

    #[test]
    fn nan_and_infinity_are_decode_errors() {
        let e = enc(DataType::F32, WordOrder::Abcd);
        assert_eq!(
            decode_registers(&e, &f32_be_registers(f32::NAN)),
            Err(DecodeError::NotFinite)
        );
        assert_eq!(
            decode_registers(&e, &f32_be_registers(f32::INFINITY)),
            Err(DecodeError::NotFinite)
        );
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        let e = enc(DataType::F64, WordOrder::Abcd);
        assert_eq!(
            decode_registers(&e, &[1, 2]),
            Err(DecodeError::Short { need: 4, got: 2 })
        );
    }
}
