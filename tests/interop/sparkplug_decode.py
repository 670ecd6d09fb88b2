"""Decodes Sparkplug B payloads with pysparkplug, an independent implementation (its own
compiled sparkplug_b.proto, Google's protobuf runtime), for tests/interop/sparkplug.rs.

stdin: one message per line, "<topic>\t<payload as hex>". stdout: one JSON object per line:
{"topic", "type", "seq", "timestamp", "metrics": [{"name", "alias", "datatype", "value",
"is_historical", "is_null"}]}. Aliases of DATA messages are resolved to names with the last
NBIRTH/DBIRTH seen, as a host application does. A payload that does not decode prints
{"topic", "error"}.
"""

import json
import sys

import pysparkplug as sp

DECODERS = {
    "NBIRTH": sp.NBirth,
    "DBIRTH": sp.DBirth,
    "NDATA": sp.NData,
    "DDATA": sp.DData,
    "NDEATH": sp.NDeath,
    "DDEATH": sp.DDeath,
    "NCMD": sp.NCmd,
    "DCMD": sp.DCmd,
}


def metric(m):
    value = m.value
    if isinstance(value, bytes):
        value = value.hex()
    return {
        "name": m.name,
        "alias": m.alias,
        "datatype": m.datatype.name,
        "value": value,
        "is_historical": m.is_historical,
        "is_null": m.is_null,
    }


def main():
    births = {}
    for line in sys.stdin:
        topic, _, hexed = line.rstrip("\n").partition("\t")
        levels = topic.split("/")
        kind = levels[2] if len(levels) > 3 else ""
        try:
            raw = bytes.fromhex(hexed)
            node = "/".join(levels[:2] + levels[3:4])
            device = "/".join(levels[3:5]) if len(levels) > 4 else None
            # NBIRTH declares the node's aliases; a DBIRTH adds its device's.
            key = node if kind.startswith("N") else node + "/" + (device or "")
            decoder = DECODERS[kind]
            if kind in ("NDATA", "DDATA", "NCMD", "DCMD"):
                payload = decoder.decode(raw, birth=births.get(key))
            else:
                payload = decoder.decode(raw)
            if kind in ("NBIRTH", "DBIRTH"):
                births[key] = payload
            if kind == "NDEATH":
                metrics = [payload.bd_seq_metric]
                seq = None
                ts = payload.timestamp
            else:
                metrics = list(getattr(payload, "metrics", ()))
                seq = getattr(payload, "seq", None)
                ts = payload.timestamp
            out = {
                "topic": topic,
                "type": kind,
                "seq": seq,
                "timestamp": ts,
                "metrics": [metric(m) for m in metrics],
            }
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            out = {"topic": topic, "error": repr(e)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
