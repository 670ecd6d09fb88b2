//! Modbus TCP frames (MBAP header + PDU): the pure half of alsentry's own Modbus TCP client
//! (`io/modbus.rs`). Requests are written into caller-owned buffers and replies are checked and
//! taken apart in place, so a read allocates nothing.
//!
//! The checks are tokio-modbus's, which this client replaces on TCP links (RTU keeps it): a
//! reply must carry the request's transaction and unit id, protocol 0, the request's function
//! code (or it with the exception bit), and at least the values asked for.

use super::action::WriteData;
use super::decode::Table;

/// The MBAP header: transaction id, protocol id, length, unit id.
pub const HEADER: usize = 7;
/// The largest frame: header plus a 253-byte PDU.
pub const MAX_FRAME: usize = HEADER + 253;
/// A read request: header plus function code, start and count.
pub const READ_REQUEST: usize = 12;

/// What is wrong with a reply, or the device's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The device answered with exception `code`; the stream is in step.
    Exception(u8),
    /// The reply does not fit the request: the stream cannot be trusted any more.
    Malformed(String),
    /// A well-formed reply with fewer values than asked.
    Short { got: usize, expected: usize },
}

/// The function code that reads `table`.
pub fn read_function(table: Table) -> u8 {
    match table {
        Table::Coil => 1,
        Table::Discrete => 2,
        Table::Holding => 3,
        Table::Input => 4,
    }
}

fn header(out: &mut [u8], tid: u16, unit: u8, pdu_len: usize) {
    out[0..2].copy_from_slice(&tid.to_be_bytes());
    out[2..4].copy_from_slice(&[0, 0]);
    // The length counts the unit id and the PDU; a PDU is at most 253 bytes.
    out[4..6].copy_from_slice(&((pdu_len + 1) as u16).to_be_bytes());
    out[6] = unit;
}

/// The request reading `count` addresses of `table` from `start`.
pub fn read_request(tid: u16, unit: u8, table: Table, start: u16, count: u16) -> [u8; 12] {
    let mut out = [0u8; READ_REQUEST];
    header(&mut out, tid, unit, 5);
    out[7] = read_function(table);
    out[8..10].copy_from_slice(&start.to_be_bytes());
    out[10..12].copy_from_slice(&count.to_be_bytes());
    out
}

/// The request writing `data` at `start` (FC 05, 06, 15 or 16, as [`WriteData::function_code`]
/// says), replacing what `out` held.
pub fn write_request(out: &mut Vec<u8>, tid: u16, unit: u8, start: u16, data: &WriteData) {
    out.clear();
    out.resize(HEADER, 0);
    let fc = data.function_code();
    out.push(fc);
    out.extend_from_slice(&start.to_be_bytes());
    match data {
        WriteData::Coils(b) if fc == 5 => {
            let on = b.first().copied().unwrap_or(false);
            out.extend_from_slice(if on { &[0xFF, 0x00] } else { &[0x00, 0x00] });
        }
        WriteData::Registers(w) if fc == 6 => {
            out.extend_from_slice(&w.first().copied().unwrap_or(0).to_be_bytes());
        }
        WriteData::Coils(b) => {
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            let bytes = b.len().div_ceil(8);
            out.push(bytes as u8);
            let at = out.len();
            out.resize(at + bytes, 0);
            for (i, &on) in b.iter().enumerate() {
                if on {
                    out[at + i / 8] |= 1 << (i % 8);
                }
            }
        }
        WriteData::Registers(w) => {
            out.extend_from_slice(&(w.len() as u16).to_be_bytes());
            out.push((w.len() * 2) as u8);
            for word in w {
                out.extend_from_slice(&word.to_be_bytes());
            }
        }
    }
    let pdu_len = out.len() - HEADER;
    // A write's data is at most 123 registers or 1968 coils (the config checks it).
    debug_assert!(pdu_len <= 253, "a {pdu_len}-byte PDU");
    header(out, tid, unit, pdu_len);
}

/// The length of the frame at the front of `buf`, once its header is in (`None`: not yet).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ReplyError> {
    if buf.len() < 6 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    // At least the unit id and a function code; at most a whole PDU.
    if !(2..=254).contains(&len) {
        return Err(ReplyError::Malformed(format!(
            "the reply's MBAP length is {len}, outside 2..=254"
        )));
    }
    Ok(Some(6 + len))
}

/// The PDU of the whole reply `frame`, after checking it answers request `tid` to `unit` with
/// `function`. An exception reply is [`ReplyError::Exception`].
pub fn reply_pdu(frame: &[u8], tid: u16, unit: u8, function: u8) -> Result<&[u8], ReplyError> {
    let (Some(head), Some(pdu)) = (frame.get(..HEADER), frame.get(HEADER..)) else {
        return Err(ReplyError::Malformed(
            "the reply is shorter than its header".into(),
        ));
    };
    let got_tid = u16::from_be_bytes([head[0], head[1]]);
    if got_tid != tid {
        return Err(ReplyError::Malformed(format!(
            "the reply is to transaction {got_tid}, not {tid}: the stream is out of step"
        )));
    }
    let protocol = u16::from_be_bytes([head[2], head[3]]);
    if protocol != 0 {
        return Err(ReplyError::Malformed(format!(
            "the reply's protocol id is {protocol}, not 0 (Modbus)"
        )));
    }
    if head[6] != unit {
        return Err(ReplyError::Malformed(format!(
            "the reply is from unit {}, not {unit}",
            head[6]
        )));
    }
    match pdu {
        [fc, code, ..] if *fc == function | 0x80 => Err(ReplyError::Exception(*code)),
        [fc, ..] if *fc == function => Ok(pdu),
        [fc, ..] => Err(ReplyError::Malformed(format!(
            "the reply has function code {fc:#04x}, the request {function:#04x}"
        ))),
        [] => Err(ReplyError::Malformed(
            "the reply has no function code".into(),
        )),
    }
}

/// The data bytes of a read reply's PDU (after its byte count).
fn read_data(pdu: &[u8]) -> Result<&[u8], ReplyError> {
    let Some(&count) = pdu.get(1) else {
        return Err(ReplyError::Malformed("the reply has no byte count".into()));
    };
    pdu.get(2..2 + usize::from(count)).ok_or_else(|| {
        ReplyError::Malformed(format!(
            "the reply's byte count {count} overruns its {} data bytes",
            pdu.len().saturating_sub(2)
        ))
    })
}

/// The registers of a read reply's PDU (FC 03/04), into `out`: the first `count` of them (a
/// reply with more is taken as tokio-modbus does, the extra ones dropped).
pub fn registers(pdu: &[u8], count: u16, out: &mut Vec<u16>) -> Result<(), ReplyError> {
    let data = read_data(pdu)?;
    if data.len() % 2 != 0 {
        return Err(ReplyError::Malformed(format!(
            "the reply's byte count {} is odd for registers",
            data.len()
        )));
    }
    out.clear();
    out.extend(
        data.chunks_exact(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]])),
    );
    if out.len() < usize::from(count) {
        return Err(ReplyError::Short {
            got: out.len(),
            expected: usize::from(count),
        });
    }
    out.truncate(usize::from(count));
    Ok(())
}

/// The first `count` bits of a read reply's PDU (FC 01/02), into `out`.
pub fn bits(pdu: &[u8], count: u16, out: &mut Vec<bool>) -> Result<(), ReplyError> {
    let data = read_data(pdu)?;
    let count = usize::from(count);
    // Bits come padded to whole bytes.
    let got = (data.len() * 8).min(count);
    if got < count {
        return Err(ReplyError::Short {
            got,
            expected: count,
        });
    }
    out.clear();
    out.extend((0..count).map(|i| data[i / 8] & (1 << (i % 8)) != 0));
    Ok(())
}

/// Checks that a write reply's PDU echoes the write of `data` at `start`: its address, and for
/// FC 15/16 its count. The value a single write echoes is not compared (the read-back that
/// follows every write is what tells whether the value took).
pub fn write_echo(pdu: &[u8], start: u16, data: &WriteData) -> Result<(), ReplyError> {
    let word = |at: usize| {
        pdu.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let single = matches!(data.function_code(), 5 | 6);
    let echoed = word(1) == Some(start) && (single || word(3) == Some(data.len()));
    if echoed && pdu.len() >= 5 {
        Ok(())
    } else {
        Err(ReplyError::Malformed(format!(
            "the reply to a write of {} at {start} does not echo it",
            data.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply frame to `tid` from `unit` with `pdu`.
    fn frame(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = vec![0; HEADER];
        header(&mut f, tid, unit, pdu.len());
        f.extend_from_slice(pdu);
        f
    }

    #[test]
    fn a_read_request_is_the_twelve_bytes_of_the_spec() {
        // Modbus Messaging on TCP/IP, 4.1: transaction 0x0102, unit 0x11, FC 03 at 0x006B x 3.
        let r = read_request(0x0102, 0x11, Table::Holding, 0x006B, 3);
        assert_eq!(r, [1, 2, 0, 0, 0, 6, 0x11, 3, 0, 0x6B, 0, 3]);
        assert_eq!(read_request(0, 1, Table::Input, 0, 32)[7], 4);
        assert_eq!(read_request(0, 1, Table::Coil, 0, 1)[7], 1);
        assert_eq!(read_request(0, 1, Table::Discrete, 0, 1)[7], 2);
    }

    #[test]
    fn write_requests_follow_the_function_codes_layouts() {
        let mut out = Vec::new();
        write_request(&mut out, 7, 2, 10, &WriteData::Coils(vec![true]));
        assert_eq!(out, [0, 7, 0, 0, 0, 6, 2, 5, 0, 10, 0xFF, 0]);
        write_request(&mut out, 7, 2, 10, &WriteData::Registers(vec![0x1234]));
        assert_eq!(out, [0, 7, 0, 0, 0, 6, 2, 6, 0, 10, 0x12, 0x34]);
        let coils = vec![true, false, true, true, false, false, false, false, true];
        write_request(&mut out, 1, 1, 0x13, &WriteData::Coils(coils));
        assert_eq!(
            out,
            [0, 1, 0, 0, 0, 9, 1, 15, 0, 0x13, 0, 9, 2, 0b0000_1101, 1]
        );
        write_request(
            &mut out,
            1,
            1,
            1,
            &WriteData::Registers(vec![0x000A, 0x0102]),
        );
        assert_eq!(
            out,
            [0, 1, 0, 0, 0, 11, 1, 16, 0, 1, 0, 2, 4, 0, 0x0A, 1, 2]
        );
    }

    #[test]
    fn the_frame_length_comes_from_the_header_and_must_be_plausible() {
        assert_eq!(frame_len(&[0, 1, 0, 0, 0]), Ok(None));
        assert_eq!(frame_len(&[0, 1, 0, 0, 0, 5]), Ok(Some(11)));
        assert!(frame_len(&[0, 1, 0, 0, 0, 1]).is_err());
        assert!(frame_len(&[0, 1, 0, 0, 1, 0]).is_err());
        assert_eq!(frame_len(&[0, 1, 0, 0, 0, 254]), Ok(Some(MAX_FRAME)));
    }

    #[test]
    fn a_register_reply_is_checked_against_its_request_and_taken_out() {
        let f = frame(9, 3, &[4, 4, 0x12, 0x34, 0xAB, 0xCD]);
        let pdu = reply_pdu(&f, 9, 3, 4).unwrap();
        let mut words = vec![99];
        registers(pdu, 2, &mut words).unwrap();
        assert_eq!(words, [0x1234, 0xABCD]);
        // More than asked is cut to the count; fewer is short.
        registers(pdu, 1, &mut words).unwrap();
        assert_eq!(words, [0x1234]);
        assert_eq!(
            registers(pdu, 3, &mut words),
            Err(ReplyError::Short {
                got: 2,
                expected: 3
            })
        );
        for (tid, unit, fc) in [(8, 3, 4), (9, 4, 4), (9, 3, 3)] {
            assert!(
                matches!(reply_pdu(&f, tid, unit, fc), Err(ReplyError::Malformed(_))),
                "{tid} {unit} {fc}"
            );
        }
        let mut other_protocol = f.clone();
        other_protocol[3] = 1;
        assert!(matches!(
            reply_pdu(&other_protocol, 9, 3, 4),
            Err(ReplyError::Malformed(_))
        ));
    }

    #[test]
    fn an_exception_reply_is_the_devices_no() {
        let f = frame(1, 1, &[0x83, 0x02]);
        assert_eq!(reply_pdu(&f, 1, 1, 3), Err(ReplyError::Exception(2)));
        // The exception bit on another function is out of step, not a "no".
        assert!(matches!(
            reply_pdu(&f, 1, 1, 4),
            Err(ReplyError::Malformed(_))
        ));
        let cut = frame(1, 1, &[0x83]);
        assert!(matches!(
            reply_pdu(&cut, 1, 1, 3),
            Err(ReplyError::Malformed(_))
        ));
    }

    #[test]
    fn byte_counts_that_overrun_or_split_a_register_are_wire_errors() {
        let mut words = Vec::new();
        assert!(matches!(
            registers(&[3, 6, 0, 1, 0, 2], 3, &mut words),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            registers(&[3, 3, 0, 1, 0], 1, &mut words),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            registers(&[3], 1, &mut words),
            Err(ReplyError::Malformed(_))
        ));
    }

    #[test]
    fn bit_replies_are_unpacked_lsb_first_and_cut_to_the_count() {
        let mut out = Vec::new();
        bits(&[1, 2, 0b1100_1101, 0b0000_0001], 9, &mut out).unwrap();
        assert_eq!(
            out,
            [true, false, true, true, false, false, true, true, true]
        );
        assert_eq!(
            bits(&[2, 1, 0xFF], 9, &mut out),
            Err(ReplyError::Short {
                got: 8,
                expected: 9
            })
        );
    }

    #[test]
    fn a_write_reply_must_echo_the_write() {
        let coil = WriteData::Coils(vec![true]);
        assert!(write_echo(&[5, 0, 10, 0xFF, 0], 10, &coil).is_ok());
        assert!(write_echo(&[5, 0, 11, 0xFF, 0], 10, &coil).is_err());
        let reg = WriteData::Registers(vec![7]);
        assert!(write_echo(&[6, 0, 10, 0, 7], 10, &reg).is_ok());
        assert!(write_echo(&[6, 0, 11, 0, 7], 10, &reg).is_err());
        let regs = WriteData::Registers(vec![1, 2, 3]);
        assert!(write_echo(&[16, 0, 10, 0, 3], 10, &regs).is_ok());
        assert!(write_echo(&[16, 0, 10, 0, 2], 10, &regs).is_err());
        assert!(write_echo(&[16, 0, 10], 10, &regs).is_err());
    }
}
