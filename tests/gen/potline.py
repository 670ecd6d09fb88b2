#!/usr/bin/env python3
"""Independent potline trace generator (issue 12): a second model of prebake cells, written
apart from the simulator in src/sim, so early-warning rules are not judged only on the data
they were calibrated on. Python 3 standard library only. See tests/gen/README.md.

    python3 tests/gen/potline.py --seed N --cells 16 --hours 6 --out DIR

writes DIR/samples.csv (long form `ts,device,tag,value`, 1 Hz, the cell template's tag names,
the format `alsentry replay` reads) and DIR/truth.jsonl (ground truth, the format
`alsentry replay --truth` reads). Same seed, same files.
"""

import argparse
import json
import math
import os
import random
import sys
from datetime import datetime, timezone

EPOCH_MS = 1_788_220_800_000  # 2026-09-01T00:00:00Z: a fixed origin keeps files identical
BACK_EMF = 1.65  # what the cell controller subtracts for its pseudo-resistance
STATUS_BITS = ["feeding", "ae_active", "overfeed", "underfeed", "line_low", "tapping", "anode_change"]
TAGS = ["voltage", "current", "line_current", "line_setpoint", "voltage_target", "resistance",
        "bath_temp", "beam_position"] + STATUS_BITS


def rfc3339(ms):
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class Truth:
    """Collects ground truth; one start and one end line per disturbance and device."""

    def __init__(self):
        self.events = []
        self.next_id = 0

    def add(self, kind, cls, device, start_s, end_s, onset_s=None, precursor=None, params=None):
        fid = self.next_id
        self.next_id += 1
        base = {"fault_id": fid, "device": device, "kind": kind, "class": cls}
        if precursor is not None:
            base["precursor"] = precursor
        start_ms, end_ms = EPOCH_MS + int(start_s * 1000), EPOCH_MS + int(end_s * 1000)
        base.update({"start": rfc3339(start_ms), "end": rfc3339(end_ms)})
        if onset_s is not None:
            base["onset"] = rfc3339(EPOCH_MS + int(onset_s * 1000))
        base.update({"start_ms": start_ms, "end_ms": end_ms})
        if onset_s is not None:
            base["onset_ms"] = EPOCH_MS + int(onset_s * 1000)
        base["params"] = params or {}
        self.events.append((start_s, dict(base, phase="start")))
        self.events.append((end_s, dict(base, phase="end")))
        return fid

    def write(self, path):
        self.events.sort(key=lambda e: (e[0], e[1]["phase"] == "start", e[1]["fault_id"]))
        with open(path, "w") as f:
            for _, e in self.events:
                phase = e.pop("phase")
                f.write(json.dumps(dict({"phase": phase}, **e)) + "\n")


class Cell:
    """One cell and its controller. Differences from src/sim on purpose: 1 s steps, a
    hyperbolic alumina curve whose lean branch makes the precursor (the AE starts when the
    alumina reaches the critical concentration, not at a scripted time), a feed controller
    with fixed-length test underfeeds, a proportional beam controller on a 5-min mean, AR(1)
    noise and a two-tone metal pad, a first-order tapping rise and a linearly fading anode
    change."""

    def __init__(self, name, rng, setpoint):
        self.name, self.rng = name, rng
        self.setpoint = setpoint
        self.e0 = rng.uniform(1.60, 1.70)            # true back-EMF differs per cell
        self.r0 = rng.uniform(4.65, 5.25)           # µΩ, ohmic part at the set ACD
        self.g_beam = rng.uniform(0.035, 0.065)     # µΩ per mm
        self.beam = rng.uniform(150.0, 300.0)
        self.beam_ref = self.beam
        self.acd_drift = rng.uniform(-0.004, 0.015) / 3600.0  # µΩ/s: burn-off vs metal growth
        self.acd = 0.0
        self.c = rng.uniform(3.0, 3.5)              # wt % alumina
        self.c_crit = rng.uniform(1.55, 1.7)        # AE when alumina falls to this
        self.cons = 0.065 * rng.uniform(0.95, 1.05)  # wt %/min at full current
        self.noise_sd = rng.uniform(0.004, 0.011)   # V, AR(1) bubble noise
        self.noise_phi = rng.uniform(0.45, 0.7)
        self.noise = 0.0
        self.pad = [(rng.uniform(0.0065, 0.0075), rng.uniform(0.8, 2.2), rng.uniform(0, 6.3)),
                    (rng.uniform(0.010, 0.012), rng.uniform(0.4, 1.2), rng.uniform(0, 6.3))]
        self.temp0 = rng.uniform(950.0, 962.0)
        # Feed controller: "normal" (1.0), "test" underfeed (0.7) for a fixed time, then "over"
        # (1.4) long enough to put back what the test took out.
        self.mode, self.mode_left = "normal", rng.uniform(300, 2400)
        self.test_len = 1800.0
        self.shot_acc = rng.uniform(0, 1)
        self.feeding_left = 0
        # Beam controller.
        self.window = []
        self.since_move = 600
        self.move_left = 0.0
        self.target = self.resistance_model(3.1)
        self.hold = 0
        # Disturbance state.
        self.feed_eff = 1.0       # < 1 while a feeder is partly or fully blocked
        self.tap = None           # (t0, rise, tau)
        self.tap_applied = 0.0
        self.change = None        # (t0, step, fade_s, flag_s, noise_s)
        self.ae_left = 0
        self.ae_v = 0.0
        self.sudden_at = None
        self.pending_ae = None    # truth dict filled at onset
        self.on_ae = None

    def alumina_r(self, c):
        # Hyperbolic: gentle around 3 %, steep as c nears c_crit.
        return 0.12 / max(c - 1.0, 0.05) + 0.012 / max(c - self.c_crit + 0.08, 0.01)

    def resistance_model(self, c):
        return self.r0 + self.alumina_r(c)

    def step(self, t, line_ka, truth):
        rng = self.rng
        load = line_ka / self.setpoint
        status = {b: 0 for b in STATUS_BITS}
        if load < 0.97:
            status["line_low"] = 1
        if self.ae_left > 0:
            self.ae_left -= 1
            status["ae_active"] = status["underfeed"] = 1
            v = max(8.6, self.ae_v + rng.gauss(0, 3.0))
            if self.ae_left == 0:
                # Killed: alumina back up, the controller overfeeds for a while.
                self.c = rng.uniform(3.3, 3.7)
                self.feed_eff = 1.0
                self.mode, self.mode_left = "over", rng.uniform(900, 1500)
            return self.outputs(t, v, line_ka, status)

        # Feed controller: time-based cycle; it cannot see a blocked feeder.
        self.mode_left -= 1
        if self.mode_left <= 0:
            if self.mode == "normal":
                self.mode, self.mode_left = "test", rng.uniform(1500, 2100)
                self.test_len = self.mode_left
            elif self.mode == "test":
                self.mode, self.mode_left = "over", self.test_len * 0.3 / 0.4
            else:
                self.mode, self.mode_left = "normal", rng.uniform(600, 2400)
        ratio = {"normal": 1.0, "test": 0.7, "over": 1.4}[self.mode]
        status["underfeed"] = int(self.mode == "test")
        status["overfeed"] = int(self.mode == "over")
        self.shot_acc += ratio * load / 25.0   # a shot every ~25 s at the nominal rate
        if self.shot_acc >= 1.0:
            self.shot_acc -= 1.0
            self.feeding_left = 3
            # The controller's nominal rate matches the cell's consumption; a blocked feeder
            # delivers only `feed_eff` of each shot.
            self.c += self.cons * 25.0 / 60.0 * self.feed_eff
        if self.feeding_left > 0:
            status["feeding"] = 1
            self.feeding_left -= 1
        self.c -= self.cons * load / 60.0
        self.c = min(self.c, 4.5)

        # Tapping: metal out, ACD up along a first-order rise.
        if self.tap is not None:
            t0, rise, tau, flag_s = self.tap
            want = rise * (1 - math.exp(-(t - t0) / tau))
            self.acd += want - self.tap_applied
            self.tap_applied = want
            if t - t0 < flag_s:
                status["tapping"] = 1
            else:
                self.tap, self.tap_applied = None, 0.0
                self.hold = 180
        change_r, noise_gain = 0.0, 1.0
        if self.change is not None:
            t0, step, fade_s, flag_s, noise_s = self.change
            dt = t - t0
            if dt < fade_s:
                change_r = step * (1 - dt / fade_s)
                if dt < noise_s:
                    noise_gain = 2.5
                if dt < flag_s:
                    status["anode_change"] = 1
                elif dt < flag_s + 1:
                    self.hold = 180
            else:
                self.change = None
        self.acd += self.acd_drift

        # The anode effect starts when the alumina reaches the critical value (or on cue).
        if self.c <= self.c_crit or (self.sudden_at is not None and t >= self.sudden_at):
            self.sudden_at = None
            self.ae_left = int(rng.uniform(30, 90))
            self.ae_v = rng.uniform(15, 45)
            if self.on_ae:
                self.on_ae(t, self.ae_left)
            status["ae_active"] = 1
            return self.outputs(t, self.ae_v, line_ka, status)

        r = self.resistance_model(self.c) + self.g_beam * (self.beam - self.beam_ref) + self.acd + change_r
        self.noise = self.noise_phi * self.noise + math.sqrt(1 - self.noise_phi ** 2) * rng.gauss(0, self.noise_sd)
        pad = sum(a / 1000 * math.sin(2 * math.pi * f * t + p) for f, a, p in self.pad)
        v = self.e0 + line_ka * r / 1000 + (self.noise * noise_gain + pad) * load

        # Beam controller: proportional on the 5-min mean of its pseudo-resistance.
        r_meas = (v - BACK_EMF) / line_ka * 1000
        self.window.append(r_meas)
        if len(self.window) > 300:
            self.window.pop(0)
        self.since_move += 1
        self.hold = max(0, self.hold - 1)
        if self.move_left != 0.0:
            d = max(-0.5, min(0.5, self.move_left))
            self.beam += d
            self.move_left -= d
            if abs(self.move_left) < 1e-9:
                self.move_left = 0.0
        elif (t % 120 == 0 and len(self.window) == 300 and self.since_move >= 240 and self.hold == 0
              and not status["tapping"] and not status["anode_change"] and load >= 0.97):
            mean = sum(self.window) / 300
            err = mean - self.target - self.e0_offset()
            if abs(err) > 0.04:
                mm = round(max(-3.0, min(3.0, -0.7 * err / self.g_beam)), 1)
                if mm != 0.0:
                    self.move_left = mm
                    self.since_move = 0
                    self.window = [x + mm * self.g_beam for x in self.window]
                    truth.add("beam_move", "operation", self.name, t, t + math.ceil(abs(mm) / 0.5) + 1,
                              params={"mm": mm, "by": "controller"})
        return self.outputs(t, v, line_ka, status)

    def e0_offset(self):
        # The controller's R uses 1.65 V; its target is where this cell sits at 3.1 % alumina.
        return (self.e0 - BACK_EMF) / self.setpoint * 1000

    def outputs(self, t, v, line_ka, status):
        temp = self.temp0 + 2.0 * math.sin(2 * math.pi * t / 30000.0) + self.rng.gauss(0, 0.4)
        vt = BACK_EMF + self.setpoint * (self.target + self.e0_offset()) / 1000
        return [v, line_ka, line_ka, self.setpoint, vt, (v - BACK_EMF) / line_ka * 1000, temp, self.beam] + \
            [status[b] for b in STATUS_BITS]


def plan(rng, cells, horizon, args):
    """Disturbance schedule: (time s, cell index or None, kind, params)."""
    ev = []
    busy = {i: [] for i in range(len(cells))}

    def free(i, a, b):
        return all(b <= x or a >= y for x, y in busy[i])

    n_ae = args.aes if args.aes is not None else max(1, round(6 * len(cells) * horizon / 3600 / 96))
    order = list(range(len(cells)))
    rng.shuffle(order)
    for k in range(min(n_ae, len(cells))):
        i = order[k]
        # Mostly slow precursors, one fast and one sudden (with 3 or more AEs), as in a plant.
        kind = {1: "fast", 2: "none"}.get(k, "slow")
        # The blockage starts early enough for the alumina to reach the critical point in time.
        t0 = rng.uniform(1200, max(1300, horizon - 5400))
        ev.append((t0, i, "ae", {"precursor": kind}))
        busy[i].append((t0 - 1800, t0 + 6600))
    for i in range(len(cells)):
        for kind, mean in (("tapping", 30 * 3600), ("anode_change", 28 * 3600)):
            t = rng.uniform(0, mean)
            while t < horizon - 1800:
                dur = 600 if kind == "tapping" else 3600
                if t > 900 and free(i, t, t + dur):
                    busy[i].append((t, t + dur))
                    ev.append((t, i, kind, {}))
                t += mean * rng.uniform(0.8, 1.2)
    for _ in range(args.dips):
        ev.append((rng.uniform(1200, horizon - 1200), None, "dip", {}))
    for _ in range(args.sensor_faults):
        for _try in range(30):
            i, t, dur = rng.randrange(len(cells)), rng.uniform(1200, horizon - 1800), rng.uniform(180, 600)
            if free(i, t, t + dur):
                busy[i].append((t, t + dur))
                ev.append((t, i, rng.choice(["frozen", "out_of_range", "sensor_noise"]), {"dur": dur}))
                break
    ev.sort(key=lambda e: e[0])
    return ev


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cells", type=int, default=16)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--aes", type=int, default=None, help="anode effects (default 6 per 96 cell-hours)")
    ap.add_argument("--dips", type=int, default=1, help="line-current dips")
    ap.add_argument("--sensor-faults", type=int, default=2)
    ap.add_argument("--prefix", default="pot-{:03d}", help="device name pattern")
    args = ap.parse_args(argv)
    if args.cells < 1 or args.hours <= 0:
        ap.error("--cells and --hours must be positive")
    rng = random.Random(args.seed)
    horizon = int(args.hours * 3600)
    setpoint = 480.0
    cells = [Cell(args.prefix.format(i + 1), random.Random(rng.random()), setpoint) for i in range(args.cells)]
    truth = Truth()
    events = plan(random.Random(rng.random()), cells, horizon, args)
    os.makedirs(args.out, exist_ok=True)

    line_state, line_frac, dip = 0.0, 1.0, None
    sensor = {}  # cell index -> (kind, end_s, value)
    ae_open = {}  # cell index -> (start_s, kind)

    def ae_hook(i):
        def hook(t, length):
            start, kind = ae_open.pop(i, (t, "none"))
            truth.add("anode_effect", "process", cells[i].name, start, t + length, onset_s=t,
                      precursor=kind, params={"precursor_kind": kind})
        return hook

    for i, c in enumerate(cells):
        c.on_ae = ae_hook(i)

    ev_i = 0
    with open(os.path.join(args.out, "samples.csv"), "w") as out:
        out.write("ts,device,tag,value\n")
        for t in range(horizon):
            while ev_i < len(events) and events[ev_i][0] <= t:
                _, i, kind, p = events[ev_i]
                ev_i += 1
                if kind == "ae":
                    c = cells[i]
                    ae_open[i] = (t, p["precursor"])
                    if p["precursor"] == "none":
                        c.sudden_at = t
                    elif p["precursor"] == "slow":
                        c.feed_eff = rng.uniform(0.3, 0.5)   # partly blocked feeder
                    else:
                        c.feed_eff = 0.0                     # blocked feeder
                elif kind == "tapping":
                    flag = rng.uniform(180, 360)
                    cells[i].tap = (t, rng.uniform(0.08, 0.12), rng.uniform(60, 120), flag)
                    truth.add("tapping", "operation", cells[i].name, t, t + flag)
                elif kind == "anode_change":
                    flag, fade = rng.uniform(300, 720), rng.uniform(1800, 3000)
                    cells[i].change = (t, rng.uniform(0.04, 0.1), fade, flag, 1200)
                    truth.add("anode_change", "operation", cells[i].name, t, t + fade, params={"flag_s": round(flag)})
                elif kind == "dip":
                    length = rng.uniform(180, 480)
                    dip = (t, t + length, rng.uniform(0.94, 0.965))
                    for c in cells:
                        truth.add("line_current_drop", "process", c.name, t, t + length,
                                  params={"fraction": round(dip[2], 3)})
                else:
                    end = t + p["dur"]
                    sensor[i] = (kind, end, None)
                    truth.add(kind, "sensor", cells[i].name, t, end, params={"signal": "voltage"})
            # Line current: slow AR(1) wander (±0.4 %) and a 40 s ripple, dips with a 3 s lag.
            line_state = 0.995 * line_state + math.sqrt(1 - 0.995 ** 2) * rng.gauss(0, 0.004)
            factor = 1 + line_state + 0.002 * math.sin(2 * math.pi * t / 40.0)
            want = 1.0
            if dip is not None:
                if dip[0] <= t < dip[1]:
                    want = dip[2]
                elif t >= dip[1] + 30:
                    dip = None
            line_frac += (want - line_frac) * (1 - math.exp(-1 / 3.0))
            line_ka = setpoint * factor * line_frac
            ts = EPOCH_MS + t * 1000
            for i, c in enumerate(cells):
                vals = c.step(t, line_ka, truth)
                if i in sensor:
                    kind, end, held = sensor[i]
                    if t >= end:
                        del sensor[i]
                    elif kind == "frozen":
                        held = vals[0] if held is None else held
                        sensor[i] = (kind, end, held)
                        vals[0] = held
                    elif kind == "out_of_range":
                        # A dead input or a saturated one (0xFFFF at 0.01 V).
                        vals[0] = 0.0 if (i % 2) else 655.35
                    else:
                        vals[0] += rng.gauss(0, 0.06)
                    if kind in ("frozen", "out_of_range", "sensor_noise") and i in sensor:
                        vals[5] = (vals[0] - BACK_EMF) / line_ka * 1000
                # Polls of a line are staggered by a few ms per cell, in time order.
                cts = ts + i * 7
                for tag, v in zip(TAGS, vals):
                    out.write(f"{cts},{c.name},{tag},{v:.6g}\n" if not isinstance(v, int) else f"{cts},{c.name},{tag},{v}\n")
    # An AE whose precursor did not reach the critical point in time is still in the truth.
    for i, (start, kind) in ae_open.items():
        truth.add("anode_effect", "process", cells[i].name, start, horizon, precursor=kind,
                  params={"precursor_kind": kind, "note": "no onset within the run"})
    truth.write(os.path.join(args.out, "truth.jsonl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
