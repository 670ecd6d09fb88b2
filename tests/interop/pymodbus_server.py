#!/usr/bin/env python3
"""An independent Modbus TCP server for interop tests (pymodbus 3.6.x).

Usage: pymodbus_server.py PORT UNITS
Serves units 1..UNITS with 0-based addressing. Reads commands from stdin, one per line:
  set UNIT input|holding|coil|discrete ADDR VALUE [VALUE...]   (bits as 0/1)
  get UNIT input|holding|coil|discrete ADDR COUNT              -- prints "VALUES v1 v2 ..."
  stick UNIT ADDR         -- clients' writes to holding ADDR are acknowledged but not kept
  stop     -- exit
Prints "READY" once listening.
"""
import asyncio
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncTcpServer


class StickyBlock(ModbusSequentialDataBlock):
    """Holding registers where some addresses keep their value whatever a client writes (a
    controller overriding a request), for read-back mismatches."""

    def __init__(self, address, values):
        super().__init__(address, values)
        self.stuck = set()
        self.force = False

    def setValues(self, address, values):
        if not isinstance(values, list):
            values = [values]
        for i, v in enumerate(values):
            if self.force or (address + i) not in self.stuck:
                super().setValues(address + i, [v])


def make_context(units):
    slaves = {}
    for u in range(1, units + 1):
        slaves[u] = ModbusSlaveContext(
            di=ModbusSequentialDataBlock(0, [0] * 100),
            co=ModbusSequentialDataBlock(0, [0] * 100),
            hr=StickyBlock(0, [0] * 100),
            ir=ModbusSequentialDataBlock(0, [0] * 100),
            zero_mode=True,
        )
    return ModbusServerContext(slaves=slaves, single=False)


async def commands(ctx):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        parts = line.decode().split()
        if not parts:
            continue
        if parts[0] == "stop":
            return
        if parts[0] == "set":
            unit, table, addr = int(parts[1]), parts[2], int(parts[3])
            words = [int(w, 0) for w in parts[4:]]
            fc = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}[table]
            hr = ctx[unit].store["h"]
            hr.force = True
            ctx[unit].setValues(fc, addr, words)
            hr.force = False
            print("OK", flush=True)
        if parts[0] == "stick":
            unit, addr = int(parts[1]), int(parts[2])
            ctx[unit].store["h"].stuck.add(addr)
            print("OK", flush=True)
        if parts[0] == "get":
            unit, table, addr, count = int(parts[1]), parts[2], int(parts[3]), int(parts[4])
            fc = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}[table]
            values = ctx[unit].getValues(fc, addr, count)
            print("VALUES " + " ".join(str(int(v)) for v in values), flush=True)


async def main():
    port, units = int(sys.argv[1]), int(sys.argv[2])
    ctx = make_context(units)
    server = asyncio.create_task(StartAsyncTcpServer(context=ctx, address=("127.0.0.1", port)))
    # Readiness: try to connect until the server accepts.
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    print("READY", flush=True)
    await commands(ctx)
    server.cancel()


if __name__ == "__main__":
    asyncio.run(main())
