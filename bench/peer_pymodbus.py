#!/usr/bin/env python3
"""Peer for the end-to-end bench: the same job as alsentry in `[data] mode = "poll"`, done the
plain way with pymodbus (asyncio) and paho-mqtt. One connection per cell; every period each
cell is read (input 0-15, input 20, holding 0-1, holding 10-14: the 4 reads alsentry settles on
for the cell template, whose unmapped registers 16-19 and holding 2-9 answer exception 02), its
22 tags decoded with the template's types, word orders and scales, and one JSON message
published per poll. No rules, no windows, no outbox: it does less than alsentry.
`--cell flat16` is issue 22's cell (examples/flat_cells.rs): 16 float32 values (ABCD) in input
registers 0-31, one read per poll.

    python3 bench/peer_pymodbus.py --first-port 25100 --cells 100 --period 1.0 --mqtt-port 18830
Runs until SIGTERM/SIGINT.
"""
import argparse
import asyncio
import json
import logging
import signal
import struct
import time

import paho.mqtt.client as mqtt
from pymodbus.client import AsyncModbusTcpClient

# (name, table, address, type, order, scale, bit) as in config/templates/cell.toml
TAGS = [
    ("voltage", "in", 0, "f32", "CDAB", 1, None),
    ("current", "in", 2, "f32", "CDAB", 1, None),
    ("bath_temp", "in", 4, "i16", "", 0.1, None),
    ("alumina", "in", 5, "u16", "", 0.01, None),
    ("resistance", "in", 6, "u16", "", 0.001, None),
    ("status", "in", 7, "u16", "", 1, None),
    ("feeding", "in", 7, "bool", "", 1, 0),
    ("ae_active", "in", 7, "bool", "", 1, 1),
    ("overfeed", "in", 7, "bool", "", 1, 2),
    ("underfeed", "in", 7, "bool", "", 1, 3),
    ("line_low", "in", 7, "bool", "", 1, 4),
    ("heartbeat", "in", 8, "u16", "", 1, None),
    ("voltage_mv", "in", 9, "u16", "", 0.001, None),
    ("line_current", "in", 10, "f32", "ABCD", 1, None),
    ("voltage_badc", "in", 12, "f32", "BADC", 1, None),
    ("resistance_dcba", "in", 14, "f32", "DCBA", 1, None),
    ("line_current_int", "in", 20, "u16", "", 0.1, None),
    ("voltage_target", "hold", 0, "u16", "", 0.001, None),
    ("line_setpoint", "hold", 1, "u16", "", 0.1, None),
    ("feed_count", "hold", 10, "u32", "ABCD", 1, None),
    ("ae_count", "hold", 12, "u16", "", 1, None),
    ("uptime", "hold", 13, "u32", "CDAB", 1, None),
]


def words(regs, addr, order):
    a, b = regs[addr], regs[addr + 1]
    if order in ("CDAB", "DCBA"):
        a, b = b, a
    raw = struct.pack(">HH", a, b)
    if order in ("BADC", "DCBA"):
        raw = bytes([raw[1], raw[0], raw[3], raw[2]])
    return raw


def decode(inp, hold):
    out = {}
    for name, table, addr, typ, order, scale, bit in TAGS:
        regs = inp if table == "in" else hold
        if typ == "bool":
            v = (regs[addr] >> bit) & 1
        elif typ == "u16":
            v = regs[addr]
        elif typ == "i16":
            v = struct.unpack(">h", struct.pack(">H", regs[addr]))[0]
        elif typ == "u32":
            v = struct.unpack(">I", words(regs, addr, order))[0]
        else:
            v = struct.unpack(">f", words(regs, addr, order))[0]
        out[name] = v * scale
    return out


async def poll_cell(client):
    r = [await client.read_input_registers(0, 16, slave=1),
         await client.read_input_registers(20, 1, slave=1),
         await client.read_holding_registers(0, 2, slave=1),
         await client.read_holding_registers(10, 5, slave=1)]
    if any(x.isError() for x in r):
        raise RuntimeError("exception reply")
    inp = r[0].registers + [0, 0, 0, 0] + r[1].registers
    hold = r[2].registers + [0] * 8 + r[3].registers
    return decode(inp, hold)


async def poll_flat16(client):
    r = await client.read_input_registers(0, 32, slave=1)
    if r.isError():
        raise RuntimeError("exception reply")
    regs = r.registers
    return {f"t{k:02}": struct.unpack(">f", struct.pack(">HH", regs[2 * k], regs[2 * k + 1]))[0] for k in range(16)}


async def cell(i, args, mq, stats, stop):
    name = f"pot-{i + 1:03}"
    client = AsyncModbusTcpClient(args.host, port=args.first_port + i, timeout=1, retries=0)
    await client.connect()
    topic = f"peer/py/{name}/data"
    # Spread the first polls over one period, as alsentry does.
    next_t = time.monotonic() + args.period * (i / max(1, args.cells))
    while not stop.is_set():
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        try:
            values = await (poll_flat16(client) if args.cell == "flat16" else poll_cell(client))
            payload = json.dumps({"device": name, "ts": int(time.time() * 1000), "values": values})
            mq.publish(topic, payload, qos=0)
            stats["ok"] += 1
        except Exception:  # noqa: BLE001 - count and carry on, like a poller would
            stats["failed"] += 1
            if not client.connected:
                await client.connect()
        next_t += args.period
        now = time.monotonic()
        if next_t < now:
            skipped = int((now - next_t) / args.period) + 1
            stats["missed"] += skipped
            next_t += skipped * args.period


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--first-port", type=int, required=True)
    ap.add_argument("--cells", type=int, required=True)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--cell", choices=("cell", "flat16"), default="cell")
    args = ap.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    mq = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="peer-py")
    mq.max_queued_messages_set(0)
    mq.connect("127.0.0.1", args.mqtt_port)
    mq.loop_start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    stats = {"ok": 0, "failed": 0, "missed": 0}
    tasks = [asyncio.create_task(cell(i, args, mq, stats, stop)) for i in range(args.cells)]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    mq.loop_stop()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
