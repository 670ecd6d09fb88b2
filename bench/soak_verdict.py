#!/usr/bin/env python3
"""The soak's memory verdict (bench/soak.sh): is the agent's resident memory flat after warm-up?

The figure judged is the agent's anonymous resident memory (RssAnon: heap and stacks), where a
leak shows; VmRSS is reported beside it but also counts the binary's code pages, which grow by up
to a megabyte the first time a code path runs (the first alarm of a run, say) and are no leak.
CSVs without the agent_anon_kib column (older runs) are judged on VmRSS.

    bench/soak_verdict.py SAMPLES.csv WARMUP_S DURATION_S LOG_ERRORS CLK_TCK MAX_TREND_KIB MAX_STEP_KIB
    bench/soak_verdict.py --self-test

A leak is a trend: the Theil-Sen estimate (the median of the slopes between every pair of
samples after warm-up) times the window must stay below MAX_TREND_KIB. A one-time step (glibc
keeping a freed spike in a thread's arena, a new thread's stack) moves at most half of the pairs,
so it does not make a trend; it still counts against MAX_STEP_KIB, the bound on the growth from
the first to the last sample. Exit 0 when flat, 1 when growing.
"""
import csv
import statistics
import sys


def verdict(t, rss, bound, step_bound):
    slopes = [
        (rss[j] - rss[i]) / (t[j] - t[i])
        for i in range(len(t))
        for j in range(i + 1, len(t))
        if t[j] > t[i]
    ]
    slope = statistics.median(slopes)
    trend = slope * (t[-1] - t[0])
    growth = rss[-1] - rss[0]
    return trend < bound and growth < step_bound, slope, trend, growth


def self_test():
    t = list(range(120, 601, 10))
    flat = [19000.0] * len(t)
    one_step = [19000.0 if x < 300 else 20000.0 for x in t]  # +1000 KiB once, mid-window
    late_step = [19000.0 if x < 560 else 20500.0 for x in t]
    leak = [19000.0 + (x - 120) * 3891 / 600 for x in t]  # ~600 MiB/day
    stairs = [19000.0 + (x // 120) * 400 for x in t]  # +400 KiB every 2 minutes
    big_step = [19000.0 if x < 300 else 24000.0 for x in t]
    cases = [("flat", flat, True), ("one step", one_step, True), ("late step", late_step, True),
             ("linear leak", leak, False), ("staircase leak", stairs, False),
             ("5 MiB step", big_step, False)]
    bad = 0
    for name, rss, want in cases:
        ok = verdict(t, rss, 1024, 4096)[0]
        print(f"soak_verdict self-test: {name}: {'flat' if ok else 'growing'}"
              f" ({'as expected' if ok == want else 'WRONG'})")
        bad += ok != want
    return 1 if bad else 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    path, warm, dur, errors, hz, bound, step_bound = argv[1], *map(float, argv[2:8])
    rows = [r for r in csv.DictReader(open(path)) if float(r["t_s"]) >= warm]
    if len(rows) < 3:
        print("soak: too few samples after warm-up")
        return 1
    t = [float(r["t_s"]) for r in rows]
    vm = [float(r["agent_rss_kib"]) for r in rows]
    judged = "RssAnon" if rows[0].get("agent_anon_kib") else "VmRSS"
    rss = [float(r["agent_anon_kib"]) for r in rows] if judged == "RssAnon" else vm
    cpu = [float(r["agent_cpu_ticks"]) for r in rows]
    span = t[-1] - t[0]
    flat, slope, trend, growth = verdict(t, rss, bound, step_bound)
    print(f"soak: {dur:.0f}s, warm-up {warm:.0f}s; agent VmRSS after warm-up: first {vm[0]:.0f} KiB, "
          f"last {vm[-1]:.0f} KiB, min {min(vm):.0f}, max {max(vm):.0f}, growth {vm[-1] - vm[0]:+.0f} KiB")
    print(f"soak: agent {judged} (judged) after warm-up: first {rss[0]:.0f} KiB, last {rss[-1]:.0f} KiB, "
          f"min {min(rss):.0f}, max {max(rss):.0f}, growth {growth:+.0f} KiB ({growth * 100 / rss[0]:+.1f} %)")
    print(f"soak: agent CPU after warm-up: {(cpu[-1] - cpu[0]) * 100 / hz / span:.1f} % of one core; "
          f"{errors:.0f} warning/error log lines")
    print(f"soak: {'FLAT' if flat else 'GROWING'} (bounds: {judged} trend over the {span:.0f} s after "
          f"warm-up below {bound:.0f} KiB, measured {trend:+.0f} KiB = {slope * 86400 / 1024:+.1f} "
          f"MiB/day (Theil-Sen); growth below {step_bound:.0f} KiB, measured {growth:+.0f} KiB)")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
