#!/usr/bin/env python3
"""Read the documented registers of a running `alsentry sim` (normal.toml layout) with pymodbus
and check them against docs/SIMULATOR.md. Exit 0 = ok, 1 = mismatch, 77 = pymodbus missing.

    python3 tests/interop/sim_pymodbus.py --host 127.0.0.1 --cells 5020 --kilns 5021
"""
import argparse
import inspect
import struct
import sys

try:
    from pymodbus.client import ModbusTcpClient
except ImportError:
    print("SKIP: pymodbus is not installed (pip install pymodbus)")
    sys.exit(77)


def call(fn, address, count, unit):
    # The unit keyword was renamed (slave -> device_id) across pymodbus 3.x releases; unknown
    # keywords are swallowed by **kwargs, so look at the signature.
    params = inspect.signature(fn).parameters
    kw = "device_id" if "device_id" in params else "slave"
    return fn(address, count=count, **{kw: unit})


def f32(words, order):
    a, b = struct.pack(">H", words[0]), struct.pack(">H", words[1])
    raw = {"ABCD": a + b, "CDAB": b + a, "BADC": a[::-1] + b[::-1], "DCBA": b[::-1] + a[::-1]}[order]
    return struct.unpack(">f", raw)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--cells", type=int, default=5020)
    ap.add_argument("--kilns", type=int, default=5021)
    args = ap.parse_args()
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    c = ModbusTcpClient(args.host, port=args.cells)
    check(c.connect(), f"connect {args.host}:{args.cells}")
    rr = call(c.read_input_registers, 0, 16, 1)
    check(not rr.isError(), "pot-001 input 0-15")
    r = rr.registers
    v, i = f32(r[0:2], "CDAB"), f32(r[2:4], "CDAB")
    check(3.85 < v < 4.45, f"voltage CDAB {v:.4f} V in 3.9-4.3")
    check(495 < i < 505, f"current CDAB {i:.2f} kA at 500 +-1 %")
    check(f32(r[10:12], "ABCD") == i, "line current ABCD equals CDAB")
    check(f32(r[12:14], "BADC") == v, "voltage BADC equals CDAB")
    rdcba = f32(r[14:16], "DCBA")
    check(abs(rdcba - (v - 1.65) / i * 1000) < 1e-3, f"R DCBA {rdcba:.4f} uOhm = (V-1.65)/I")
    bath = struct.unpack(">h", struct.pack(">H", r[4]))[0] * 0.1
    check(940 < bath < 970, f"bath_temp i16 x0.1 {bath:.1f} degC")
    check(abs(r[9] * 0.001 - v) < 0.0006, f"voltage_mv {r[9]}")
    rr = call(c.read_holding_registers, 10, 2, 1)
    feeds = (rr.registers[0] << 16) | rr.registers[1]
    check(not rr.isError() and feeds < 200000, f"feed_count u32 ABCD {feeds}")
    rr = call(c.read_input_registers, 18, 1, 1)
    check(rr.isError() and getattr(rr, "exception_code", None) == 2, "input 18 unmapped -> exception 02")
    c.close()

    k = ModbusTcpClient(args.host, port=args.kilns)
    check(k.connect(), f"connect {args.host}:{args.kilns}")
    rr = call(k.read_holding_registers, 0, 2, 1)
    flue = rr.registers[0] * 0.1
    draft = struct.unpack(">h", struct.pack(">H", rr.registers[1]))[0]
    check(100 <= flue <= 1250, f"kiln-01 flue_temp {flue:.1f} degC")
    check(-50 <= draft <= -10, f"kiln-01 draft {draft} Pa")
    rr = call(k.read_input_registers, 0, 2, 10)
    t = f32(rr.registers, "ABCD")
    check(950 < t < 1100, f"calciner furnace_temp ABCD {t:.1f} degC")
    k.close()
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    return 0


sys.exit(main())
