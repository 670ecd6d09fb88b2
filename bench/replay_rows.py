#!/usr/bin/env python3
"""Writes a long-form sample export for `alsentry replay` measurements (docs/REPLAY.md,
"Throughput and memory"), and the configuration it fits.

    python3 bench/replay_rows.py --rows 10000000 --order device --out /tmp/rows.csv
    alsentry replay -c /tmp/rows.toml -i /tmp/rows.csv -o /dev/null

100 cells of the shipped cell template (config/templates/, copied next to the output), 10 tags
each at 1 Hz, each cell polled at its own millisecond; an anode effect on every tenth cell.
--order time writes the rows in time order; --order device groups them per cell (as a
historian export does: 100 runs, more than replay merges directly, so it sorts in chunks);
--order tag groups them per tag.
"""
import argparse
import os
import shutil

T0 = 1_795_824_000_000  # 2026-11-28T00:00:00Z
CELLS = 100
TAGS = ["voltage", "current", "resistance", "line_current", "line_setpoint",
        "bath_temp", "alumina", "ae_active", "ae_count", "heartbeat"]


def value(tag, cell, s):
    ae = cell % 10 == 0 and 3000 + cell * 20 <= s < 3000 + cell * 20 + 45
    if tag == "voltage":
        return "25.5" if ae else "%.3f" % (4.2 + (s % 17) * 0.001)
    if tag == "current" or tag == "line_current":
        return "500.0"
    if tag == "line_setpoint":
        return "500.0"
    if tag == "resistance":
        return "%.4f" % (5.1 + (s % 13) * 0.0005)
    if tag == "bath_temp":
        return "960.5"
    if tag == "alumina":
        return "2.5"
    if tag == "ae_active":
        return "1" if ae else "0"
    if tag == "ae_count":
        return "3" if cell % 10 == 0 and s >= 3000 + cell * 20 else "2"
    return str(s % 65536)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--order", choices=["time", "device", "tag"], default="device")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    seconds = a.rows // (CELLS * len(TAGS))
    ts = lambda s, c: str(T0 + s * 1000 + c)
    row = lambda s, c, t: "%s,pot-%03d,%s,%s,good\n" % (ts(s, c), c + 1, t, value(t, c, s))
    with open(a.out, "w", buffering=1 << 20) as f:
        f.write("ts,device,tag,value,quality\n")
        if a.order == "time":
            for s in range(seconds):
                f.write("".join(row(s, c, t) for c in range(CELLS) for t in TAGS))
        elif a.order == "device":
            for c in range(CELLS):
                for s in range(seconds):
                    f.write("".join(row(s, c, t) for t in TAGS))
        else:
            for t in TAGS:
                for c in range(CELLS):
                    f.write("".join(row(s, c, t) for s in range(seconds)))
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = os.path.dirname(os.path.abspath(a.out))
    for name in ["cell.toml", "cell-rules.toml"]:
        shutil.copy(os.path.join(here, "..", "config", "templates", name), out_dir)
    cfg = os.path.splitext(a.out)[0] + ".toml"
    with open(cfg, "w") as f:
        f.write('include = ["cell.toml", "cell-rules.toml"]\n[agent]\nid = "bench"\n'
                'site = "s"\narea = "potline-1"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
                '[alarms]\ncomm_loss = false\n[[devices]]\nname = "pot-{unit:03}"\n'
                'template = "cell"\nendpoint = "tcp://127.0.0.1:5020"\nunits = "1-100"\n'
                'poll = "1s"\n')
    print("%d rows (%d cells x %d tags x %d s, order %s) in %s; config %s"
          % (seconds * CELLS * len(TAGS), CELLS, len(TAGS), seconds, a.order, a.out, cfg))


if __name__ == "__main__":
    main()
