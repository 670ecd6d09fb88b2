#!/usr/bin/env python3
"""Slope statistics of a trace written by potline.py: the 5-min least-squares slope of R
(nΩ/min, every minute) away from every disturbance, and before each anode effect's onset.

    python3 tests/gen/slopes.py DIR [TAG]
"""

import collections
import json
import sys


def slope(ys):
    n = len(ys)
    xm, ym = (n - 1) / 2, sum(ys) / n
    sxy = sum((i - xm) * (y - ym) for i, y in enumerate(ys))
    sxx = sum((i - xm) ** 2 for i in range(n))
    return sxy / sxx * 60 * 1000


def pct(v, p):
    v = sorted(v)
    return v[int((len(v) - 1) * p)]


def main(path, tag="resistance"):
    series = collections.defaultdict(list)
    with open(path + "/samples.csv") as f:
        next(f)
        for line in f:
            ts, dev, t, v = line.rstrip().split(",")
            if t == tag:
                series[dev].append((int(ts), float(v)))
    truth = [json.loads(line) for line in open(path + "/truth.jsonl")]
    busy = collections.defaultdict(list)
    for e in truth:
        if e["phase"] == "start":
            # 10 min before (precursors) to 15 min after (recovery) each disturbance.
            busy[e["device"]].append((e["start_ms"] - 600_000, e["end_ms"] + 900_000))
    quiet = []
    for dev, s in sorted(series.items()):
        for end in range(300, len(s), 60):
            w = s[end - 300:end]
            if any(v > 8 or v < 1 for _, v in w):
                continue
            t = w[-1][0]
            if not any(a <= t <= b for a, b in busy[dev]):
                quiet.append(abs(slope([v for _, v in w])))
    print("quiet |slope| nOhm/min: n %d, median %.2f, p90 %.2f, p95 %.2f, p99 %.2f, max %.1f" % (
        len(quiet), pct(quiet, .5), pct(quiet, .9), pct(quiet, .95), pct(quiet, .99), max(quiet)))
    minutes = (25, 20, 15, 10, 5, 2, 0)
    print("slope of the 5 min ending N min before each AE onset, N =", minutes)
    for e in truth:
        if e["phase"] == "start" and e["kind"] == "anode_effect" and e.get("onset_ms"):
            s = series[e["device"]]
            idx = {ts // 1000: i for i, (ts, _) in enumerate(s)}
            out = []
            for m in minutes:
                i = idx.get((e["onset_ms"] - m * 60_000 - 1000) // 1000)
                out.append(None if i is None or i < 300 else round(slope([v for _, v in s[i - 300:i]]), 1))
            print(" ", e["device"], e.get("precursor"),
                  "depletion %d min:" % ((e["onset_ms"] - e["start_ms"]) // 60_000), out)


if __name__ == "__main__":
    main(*sys.argv[1:])
