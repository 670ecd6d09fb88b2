#!/usr/bin/env python3
"""Poll the potline_400 plant like an agent would (1 Hz, every device) and report the
simulator's CPU use. Standard library only (raw Modbus TCP), so the client's own cost is small.

    alsentry sim --scenario config/scenarios/potline_400.toml &
    python3 bench/sim_load.py --pid $! --seconds 60
"""
import argparse
import asyncio
import os
import struct
import time

CELL_REQS = [(4, 0, 16), (4, 20, 1), (3, 0, 2), (3, 10, 5)]
KILN_REQS = [(3, 0, 9), (3, 10, 4)]


async def poll(host, port, units, reqs, stop, stats):
    reader, writer = await asyncio.open_connection(host, port)
    tid = 0
    next_t = time.monotonic()
    while time.monotonic() < stop:
        for unit in units:
            for fc, addr, qty in reqs:
                tid = (tid + 1) & 0xFFFF
                writer.write(struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, addr, qty))
                await writer.drain()
                hdr = await reader.readexactly(7)
                (rtid, _, length, _) = struct.unpack(">HHHB", hdr)
                body = await reader.readexactly(length - 1)
                if rtid != tid or body[0] & 0x80:
                    stats["errors"] += 1
                stats["requests"] += 1
        next_t += 1.0
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
    writer.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    stats = {"requests": 0, "errors": 0}
    stop = time.monotonic() + args.seconds
    c0, t0 = cpu_seconds(args.pid), time.monotonic()
    tasks = [poll(args.host, p, [1], CELL_REQS, stop, stats) for p in range(15100, 15500)]
    tasks.append(poll(args.host, 5021, list(range(1, 21)), KILN_REQS, stop, stats))
    await asyncio.gather(*tasks)
    c1, t1 = cpu_seconds(args.pid), time.monotonic()
    cpu = (c1 - c0) / (t1 - t0) * 100
    print(f"wall {t1 - t0:.1f} s, requests {stats['requests']} ({stats['requests'] / (t1 - t0):.0f}/s), "
          f"errors {stats['errors']}, simulator CPU {cpu:.1f} % of one core")


asyncio.run(main())
