#!/usr/bin/env python3
"""End-to-end benchmark: a Modbus simulator -> `alsentry run` -> Mosquitto -> a counting
subscriber, beside the two floors of issue 22 measured in the same run on the same simulator
and broker: the publishing floor (examples/publish_floor.rs: a paced bare tokio-modbus client
plus a minimal rumqttc publisher of the same JSON data message) and the paced bare client
(the same example with --no-publish). Every alsentry figure is the median of --repeat runs and
is reported as a ratio to both floors. Plus the transport ceiling (examples/modbus_ceiling.rs)
and, with --peers, a plain pymodbus + paho peer and Node-RED (node-red-contrib-modbus). All on
loopback. Writes BENCHMARKS.md.

    cargo bench --bench engine --bench core --bench outbox --bench core_stats   # optional, first:
    # it rebuilds target/release/alsentry with the default features
    cargo build --release --no-default-features --bin alsentry \
        --example modbus_ceiling --example publish_floor --example flat_cells
    python3 bench/e2e.py                      # about 18 min (3 repeats, the ceiling in 20 rounds; --peers: 29); --quick: ~2 min

--cell flat16 (the default) is issue 22's harness cell: 16 float32 tags read in one request
from examples/flat_cells.rs, one threshold rule; --cell cell is the simulated potline cell of
`alsentry sim` (config/templates/cell.toml, 4 reads, 6 rules + a latency probe).
--profile soak (or --bin PATH) measures another build than the release one.

Everything runs in a temporary directory; the simulator, Mosquitto and the HTTP endpoint use
free ports found at start. Node-RED is installed from npm into --nodered-dir (not committed).
"""
import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Set by set_build() from --profile / --bin.
BIN = os.path.join(ROOT, "target", "release", "alsentry")
CEILING = os.path.join(ROOT, "target", "release", "examples", "modbus_ceiling")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "publish_floor")
FLAT_SIM = os.path.join(ROOT, "target", "release", "examples", "flat_cells")
PROFILE = "release"
TICK = os.sysconf("SC_CLK_TCK")
CELL_TEMPLATE = os.path.join(ROOT, "config", "templates", "cell.toml")
# Set by set_cell() from --cell: tags per poll of one cell.
TAGS_PER_CELL = 16
CELL = "flat16"

# ---------------------------------------------------------------- process and /proc helpers


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def mem_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


def anon_kib(pid):
    """Resident anonymous memory: what the process itself allocated, without mapped files."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def build_kind():
    """The gateway build (--no-default-features) has no embedded broker."""
    with open(BIN, "rb") as f:
        return "default features (with the embedded broker)" if b"rumqttd-0." in f.read() else \
            "gateway build (`--no-default-features`: no embedded broker)"


def set_build(a):
    """Points BIN and the examples at --bin or target/<--profile>/."""
    global BIN, CEILING, FLOOR, FLAT_SIM, PROFILE
    PROFILE = a.profile
    out = os.path.join(ROOT, "target", a.profile)
    BIN = os.path.abspath(a.bin) if a.bin else os.path.join(out, "alsentry")
    ex = os.path.join(out, "examples")
    CEILING, FLOOR, FLAT_SIM = (os.path.join(ex, n) for n in ("modbus_ceiling", "publish_floor", "flat_cells"))


def profile_flags(name):
    """The [profile.NAME] section of Cargo.toml, as `key = value` items (with what it inherits)."""
    import tomllib

    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as fc:
        prof = tomllib.load(fc).get("profile", {})
    chain, seen = [], set()
    while name and name not in seen:
        seen.add(name)
        chain.append(name)
        name = prof.get(name, {}).get("inherits")
    flags = {}
    for n in reversed(chain):
        flags.update({k: v for k, v in prof.get(n, {}).items() if k not in ("inherits", "package")})
    text = ", ".join(f"{k} = {json.dumps(v)}" for k, v in flags.items()) or "cargo defaults"
    return text + (f"; inherits {' <- '.join(reversed(chain[1:]))}" if len(chain) > 1 else "")


def set_cell(kind):
    global CELL, TAGS_PER_CELL
    CELL = kind
    if kind == "flat16":
        TAGS_PER_CELL = 16
    else:
        import tomllib

        with open(CELL_TEMPLATE, "rb") as fc:
            TAGS_PER_CELL = len(tomllib.load(fc)["templates"]["cell"]["tags"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_range_free(base, n):
    for p in range(base, base + n):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def find_port_range(n, start=25100):
    for base in range(start, 60000 - n, 1000):
        if port_range_free(base, n):
            return base
    raise SystemExit(f"no free range of {n} ports")


def wait_port(port, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Proc:
    def __init__(self, name, argv, tmp, env=None, cwd=None):
        self.name = name
        self.log = open(os.path.join(tmp, f"{name}.log"), "w")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  start_new_session=True)
        self.pid = self.p.pid

    def stop(self, timeout=15.0):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()

    def alive(self):
        return self.p.poll() is None


def sh(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw).stdout.strip()


# ---------------------------------------------------------------- subscriber


def parse_ts_ms(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000.0


class Subscriber:
    """Counts data messages per topic root and measures alarm latency (payload ts -> receipt)."""

    def __init__(self, port):
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        self.counts = {}
        self.bytes = {}
        self.latencies = []
        self.alarms = 0
        self.recording = False
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.c.on_message = self.on_message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([("alsentry/#", 0), ("peer/#", 0), ("floor/#", 0)])
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def on_message(self, client, userdata, msg):
        now = time.time() * 1000.0
        t = msg.topic
        with self.lock:
            if t.endswith("/data"):
                root = t.split("/", 2)[0] + ("/" + t.split("/")[1] if t.startswith("peer/") else "")
                self.counts[root] = self.counts.get(root, 0) + 1
                self.bytes[root] = self.bytes.get(root, 0) + len(msg.payload)
            elif "/alarm/lat" in t and self.recording and not msg.retain:
                try:
                    ts = parse_ts_ms(json.loads(msg.payload)["ts"])
                    self.latencies.append(now - ts)
                    self.alarms += 1
                except (ValueError, KeyError):
                    pass

    def snapshot(self):
        with self.lock:
            return dict(self.counts)

    def snapshot_bytes(self):
        with self.lock:
            return dict(self.bytes)

    def start_latency(self):
        with self.lock:
            self.latencies, self.alarms, self.recording = [], 0, True

    def stop_latency(self):
        with self.lock:
            self.recording = False
            return list(self.latencies)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


# ---------------------------------------------------------------- configs


def potline_scenario_text(origin, name, seed, base, cells):
    """An `alsentry sim` scenario: one potline of `cells` cells on consecutive ports from `base`."""
    return f"""# generated by {origin}
[plant]
name = "{name}"
seed = {seed}
tick = "100ms"
line_current_ka = 500.0

[[groups]]
id = "potline"
kind = "cell"
name = "pot-{{index:03}}"
host = "127.0.0.1"
ports = "{base}-{base + cells - 1}"
unit = 1
"""


def scenario(path, base, cells):
    with open(path, "w") as f:
        f.write(potline_scenario_text("bench/e2e.py", f"bench_{cells}", 400, base, cells))


def flat_scenario_argv(base, cells):
    """The simulator of issue 22's harness: 16 float32 values per cell, one read."""
    return [FLAT_SIM, "--first-port", str(base), "--cells", str(cells)]


FLAT16_UNITS = ("V", "kA", "degC", "wt%")
# Issue 22's cell: 16 float32 tags in input registers 0-31 (examples/flat_cells.rs serves them).
FLAT16_TEMPLATE = "[templates.flat16]\ntags = [\n" + "".join(
    f'  {{ name = "t{k:02}", table = "input", address = {2 * k}, type = "f32", unit = "{FLAT16_UNITS[k % 4]}" }},\n'
    for k in range(16)) + "]\n"

# Issue 22's rule set: one threshold rule per cell. t00 stays within 100-111 on the simulator,
# so the rule is evaluated on every poll and never fires (steady state).
FLAT16_RULES = """
[[rules]]
name = "t00_high"
template = "flat16"
tag = "t00"
type = "high"
limit = 150.0
deadband = 1.0
priority = "high"
message = "t00 high on {device}: {value}"
"""

FLAT16_RULE_DESC = ("1 threshold rule per cell (`high` on `t00`, limit 150 with deadband 1: evaluated every poll, never "
                    "active; so no alarm latency here: `--cell cell` has a latency probe)")


def template_file(a):
    """(path, name) of the cell template, for the floor example."""
    if CELL == "cell":
        return CELL_TEMPLATE, "cell"
    path = os.path.join(a.tmp, "flat16-template.toml")
    if not os.path.exists(path):
        with open(path, "w") as ft:
            ft.write(FLAT16_TEMPLATE)
    return path, "flat16"


# The rule set of every agent run: a realistic potline set plus the latency probe.
RULES = """
[[rules]]
name = "anode_effect"
template = "cell"
tag = "voltage"
type = "high"
limit = 8.0
deadband = 0.5
on_delay = "2s"
priority = "critical"
message = "Anode effect on {device}: {value} V"

[[rules]]
name = "voltage_noise"
template = "cell"
tag = "voltage"
type = "noise"
window = "60s"
limit = 0.05

[[rules]]
name = "voltage_frozen"
template = "cell"
tag = "voltage"
type = "frozen"
window = "120s"

[[rules]]
name = "resistance_slope"
template = "cell"
tag = "resistance"
type = "slope"
window = "300s"
per = "min"
limit = 0.02

[[rules]]
name = "bath_hot"
template = "cell"
tag = "bath_temp"
type = "high"
limit = 975.0
deadband = 2.0

[[rules]]
name = "line_current_low"
template = "cell"
tag = "line_current"
type = "low"
limit = 450.0
deadband = 5.0

# Latency probe: voltage (f32) minus voltage_mv (the same reading rounded to 1 mV) is the
# rounding error, in [-0.5, 0.5] mV and random from one poll to the next, so this alarm
# toggles about every other poll on pot-001..pot-009.
[[rules]]
name = "lat"
devices = ["pot-00*"]
tag = "vq"
type = "high"
limit = 0.0
priority = "high"
message = "probe {value}"
"""

RULE_DESC = ("6 rules per cell (voltage high/anode effect with 2 s on-delay, voltage noise 60 s, voltage frozen "
             "120 s, resistance slope 300 s, bath_temp high, line_current low) + 1 derived tag per cell "
             "(`vq = voltage - voltage_mv`) + the latency probe rule `lat` (high on `vq`, pot-001..pot-009)")


def agent_config(path, tmp, run, mqtt_port, http_port, base, cells, poll, data_mode, rules=True, threads=1,
                 agent_id="bench"):
    if CELL == "flat16":
        template, tname, derived, rule_text = FLAT16_TEMPLATE, "flat16", "", FLAT16_RULES
    else:
        with open(CELL_TEMPLATE) as f:
            template = f.read()
        tname, rule_text = "cell", RULES
        derived = 'derived = [{ name = "vq", expr = "voltage - voltage_mv", unit = "V" }]\n'
    with open(path, "w") as f:
        f.write(f"""# generated by bench/e2e.py ({run})
[agent]
id = "{agent_id}"
site = "bench"
area = "potline"
state_dir = "{tmp}/state-{run}"
worker_threads = {threads}

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
topic_root = "alsentry"

[http]
listen = "127.0.0.1:{http_port}"

[data]
mode = "{data_mode}"

[summary]
# 10 s, not the shipped 60 s: every window then holds summary rounds (one message per device at
# once), their CPU and the memory they leave behind (RSS peak), not only the polls between them.
interval = "10s"

{template}

[[devices]]
name = "pot-{{index:03}}"
template = "{tname}"
endpoint = "tcp://127.0.0.1:{{port}}"
ports = "{base}-{base + cells - 1}"
unit = 1
poll = "{poll}"
timeout = "500ms"
{derived}{rule_text if rules else ""}""")


def polls(http_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {"ok": 0, "failed": 0, "missed": 0, "dropped": 0}
    for line in text.splitlines():
        m = re.match(r'alsentry_polls_total\{.*result="(\w+)".*\}\s+(\d+)', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
        m = re.match(r"alsentry_batches_dropped_total(?:\{.*\})?\s+(\d+)", line)
        if m:
            out["dropped"] += int(m.group(1))
        m = re.match(r"alsentry_engine_turns_total(?:\{.*\})?\s+(\d+)", line)
        if m:
            out["engine_turns"] = int(m.group(1))
    return out


# ---------------------------------------------------------------- measurement


def measure(pid, warmup, window, sub=None, sim_pid=None, http_port=None, counter_root=None, latency=False,
            polls_fn=None):
    """Samples CPU, memory, polls and subscriber counts over [warmup, warmup + window]. Polls
    come from the agent's /metrics (http_port) or from polls_fn (the floor's progress lines)."""
    if polls_fn is None and http_port:
        def polls_fn():
            return polls(http_port)
    time.sleep(warmup)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    s0 = cpu_seconds(sim_pid) if sim_pid else None
    p0 = polls_fn() if polls_fn else None
    n0 = sub.snapshot() if sub else {}
    b0 = sub.snapshot_bytes() if sub else {}
    if latency and sub:
        sub.start_latency()
    rss = []
    anon = []
    end = t0 + window
    while time.monotonic() < end:
        rss.append(mem_kib(pid)[0])
        anon.append(anon_kib(pid))
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    c1, t1 = cpu_seconds(pid), time.monotonic()
    s1 = cpu_seconds(sim_pid) if sim_pid else None
    p1 = polls_fn() if polls_fn else None
    n1 = sub.snapshot() if sub else {}
    b1 = sub.snapshot_bytes() if sub else {}
    lat = sub.stop_latency() if (latency and sub) else []
    rss_now, hwm = mem_kib(pid)
    rss.append(rss_now)
    r = {
        "seconds": t1 - t0,
        "cpu_s": c1 - c0,
        "rss_kib": statistics.median(rss),
        "anon_kib": statistics.median(anon) if anon else None,
        "hwm_kib": hwm,
        "sim_cpu_s": (s1 - s0) if sim_pid else None,
        "lat": lat,
    }
    if p0 and p1:
        r["polls"] = {k: p1.get(k, 0) - p0.get(k, 0) for k in p1}
    if counter_root:
        r["msgs"] = n1.get(counter_root, 0) - n0.get(counter_root, 0)
        r["msg_bytes"] = (b1.get(counter_root, 0) - b0.get(counter_root, 0)) / r["msgs"] if r["msgs"] else None
    return r


def agent_run(a, env, name, cells, period_s, data_mode="poll", latency=True, rules=True, threads=1):
    poll = f"{int(round(period_s * 1000))}ms"
    http_port = free_port()
    cfg = os.path.join(a.tmp, f"{name}.toml")
    agent_config(cfg, a.tmp, name, a.mqtt_port, http_port, a.base, cells, poll, data_mode, rules, threads)
    check = subprocess.run([BIN, "check", "--config", cfg], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"generated config {cfg} does not pass `alsentry check`:\n{check.stdout}{check.stderr}")
    env = dict(env, RUST_LOG="warn")
    p = Proc(name, [BIN, "run", "--config", cfg], a.tmp, env=env)
    try:
        if not wait_port(http_port, 20):
            raise SystemExit(f"{name}: agent HTTP endpoint did not come up; see {a.tmp}/{name}.log")
        m = measure(p.pid, a.warmup, a.window, a.sub, a.sim.pid, http_port, "alsentry", latency)
    finally:
        p.stop()
    sched = cells * m["seconds"] / period_s
    ok = m["polls"]["ok"]
    m.update(
        name=name, system="alsentry", cells=cells, period_s=period_s, poll=poll, data_mode=data_mode, rules=rules,
        threads=threads,
        scheduled=sched, completed=ok, samples=ok * TAGS_PER_CELL,
        cores=m["cpu_s"] / m["seconds"],
        cpu_us_per_sample=(m["cpu_s"] / (ok * TAGS_PER_CELL) * 1e6) if ok else None,
    )
    return m


def floor_lines(log_path):
    with open(log_path) as fl:
        return [line for line in fl if line.startswith("{") and line.endswith("}\n")]


def progress_line(proc, log_path, timeout=3.0):
    """The cumulative counters a --progress example (publish_floor, modbus_ceiling) prints at
    once on SIGUSR1, parsed; None when no new line came within `timeout` seconds."""
    before = len(floor_lines(log_path))
    proc.p.send_signal(signal.SIGUSR1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = floor_lines(log_path)
        if len(lines) > before:
            return json.loads(lines[-1])
        time.sleep(0.002)
    return None


def floor_polls(proc, log_path, timeout=3.0):
    """The floor's cumulative counters now, in the agent's terms."""
    j = progress_line(proc, log_path, timeout)
    if j is None:
        return None
    return {"ok": j["polls"], "failed": j["failed"], "missed": j["missed"], "dropped": j["publish_errors"]}


def floor_run(a, cells, period_s, publish=True):
    """The publishing floor (publish=True) or the paced bare client, at one load."""
    kind = "floor" if publish else "bare"
    name = f"{kind}-{cells}c-{period_s}s-{len(os.listdir(a.tmp))}"
    tpath, tname = template_file(a)
    argv = [FLOOR, "--template", tpath, "--template-name", tname, "--first-port", str(a.base),
            "--cells", str(cells), "--interval", f"{int(round(period_s * 1000))}ms",
            "--mqtt", f"127.0.0.1:{a.mqtt_port}", "--progress"] + ([] if publish else ["--no-publish"])
    p = Proc(name, argv, a.tmp)
    log = os.path.join(a.tmp, f"{name}.log")
    try:
        m = measure(p.pid, a.warmup, a.window, a.sub, a.sim.pid, counter_root="floor",
                    polls_fn=lambda: floor_polls(p, log))
    finally:
        p.stop()
    if "polls" not in m:
        raise SystemExit(f"{name}: no progress lines; see {log}")
    sched = cells * m["seconds"] / period_s
    ok = m["polls"]["ok"]
    m.update(
        name=name, system={"floor": "publishing floor", "bare": "bare client"}[kind], cells=cells,
        period_s=period_s, poll=f"{int(round(period_s * 1000))}ms", data_mode="poll" if publish else "off",
        scheduled=sched, completed=ok, samples=ok * TAGS_PER_CELL, cores=m["cpu_s"] / m["seconds"],
        cpu_us_per_sample=(m["cpu_s"] / (ok * TAGS_PER_CELL) * 1e6) if ok else None,
    )
    return m


def median_of(rs, key):
    xs = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def representative(rs):
    """The repeat whose CPU per tag sample is the median one (an actual run, for the detail
    tables), with every repeat's figures and the pooled alarm latencies attached."""
    ok = [r for r in rs if r.get("cpu_us_per_sample") is not None] or rs
    ok = sorted(ok, key=lambda r: r.get("cpu_us_per_sample") or 0)
    rep_run = dict(ok[(len(ok) - 1) // 2])
    rep_run["repeats"] = len(rs)
    rep_run["all_us"] = [r.get("cpu_us_per_sample") for r in rs]
    rep_run["lat"] = [x for r in rs for x in (r.get("lat") or [])]
    for k in ("cpu_us_per_sample", "cores", "rss_kib", "hwm_kib", "anon_kib", "msg_bytes"):
        rep_run["median_" + k] = median_of(rs, k)
    return rep_run


def polls_per_s(v):
    """Polls done per second of an agent run's window, counting only those whose samples reached
    the engine: flat out, a poller whose batch finds the engine's queue full drops it (a stale
    batch is worth less than the next), and such a poll did not do the agent's job."""
    done = v["polls"]["ok"] - v["polls"].get("dropped", 0)
    return done / v["seconds"] if v["seconds"] else 0.0


def median_run(rs, key):
    """The run whose `key` is the median one, with every run's figure attached (`all`)."""
    ordered = sorted(rs, key=key)
    rep_run = dict(ordered[(len(ordered) - 1) // 2])
    rep_run["all"] = [key(r) for r in rs]
    return rep_run


def peer_run(a, kind, cells, period_s, suffix=""):
    name = f"{kind}-{cells}c-{period_s}s{suffix}"
    root = f"peer/{kind}"
    if kind == "py":
        argv = [sys.executable, os.path.join(ROOT, "bench", "peer_pymodbus.py"), "--first-port", str(a.base),
                "--cells", str(cells), "--period", str(period_s), "--mqtt-port", str(a.mqtt_port), "--cell", CELL]
        p = Proc(name, argv, a.tmp)
    else:
        p = nodered_start(a, name, cells, period_s)
    try:
        m = measure(p.pid, a.warmup + (10 if kind == "nr" else 0), a.window, a.sub, a.sim.pid,
                    counter_root=root)
        alive = p.alive()
    finally:
        p.stop()
    sched = cells * m["seconds"] / period_s
    done = m["msgs"]
    m.update(
        name=name, system={"py": "pymodbus+paho", "nr": "Node-RED"}[kind], cells=cells, period_s=period_s,
        poll=f"{int(period_s * 1000)}ms", data_mode="poll", scheduled=sched, completed=done,
        samples=done * TAGS_PER_CELL, cores=m["cpu_s"] / m["seconds"], alive=alive,
        cpu_us_per_sample=(m["cpu_s"] / (done * TAGS_PER_CELL) * 1e6) if done else None,
    )
    return m


def ceiling_pairs(ceiling, v):
    """alsentry's polls/s over the bare loop's of the same repeat (or round of slices), one per
    repeat (None when the runs were not recorded per repeat, as in results of an older harness)."""
    mine, bare = v.get("all"), ceiling.get("all")
    if not mine or not bare or len(mine) != len(bare) or not all(bare):
        return None
    return [x / y for x, y in zip(mine, bare)]


def ceiling_share(ceiling, v):
    """The median of the per-repeat shares; one run's share without them."""
    ps = ceiling_pairs(ceiling, v)
    if ps:
        return statistics.median(ps)
    return polls_per_s(v) / ceiling["polls_per_s"] if ceiling["polls_per_s"] else 0.0


def peer_runs(a, env, kind, cells, period_s):
    """The peer at one load. At 400 cells @ 1 Hz, the load issue 22 judges the ratio at, --repeat
    runs, each followed by alsentry at the same load: each pair sees the same host load (single
    peer runs against the alsentry stage half an hour earlier moved the ratio by a third). The
    run with the median pair ratio is returned, every pair's ratio in `all`."""
    if (cells, period_s) != (400, 1.0) or a.quick:
        return peer_run(a, kind, cells, period_s)
    rs = []
    for i in range(a.repeat):
        print(f"run {kind} peer {cells} cells {period_s}s, pair {i + 1}/{a.repeat}", flush=True)
        r = peer_run(a, kind, cells, period_s, suffix=f"-r{i}")
        print(f"  completed {r['completed']}/{r['scheduled']:.0f} cpu {r['cores']:.3f}", flush=True)
        al = agent_run(a, env, f"alsentry-pair-{kind}-{cells}c-{period_s}s-r{i}", cells, period_s)
        r["pair_alsentry_us"] = al["cpu_us_per_sample"]
        if r["cpu_us_per_sample"] and al["cpu_us_per_sample"]:
            r["pair_ratio"] = r["cpu_us_per_sample"] / al["cpu_us_per_sample"]
        print(f"  alsentry {f(al['cpu_us_per_sample'], '.2f')} µs/sample; ratio {f(r.get('pair_ratio'), '.1f')}",
              flush=True)
        rs.append(r)
    paired = [r for r in rs if r.get("pair_ratio")]
    if not paired:
        return rs[-1]
    rep_run = median_run(paired, lambda r: r["pair_ratio"])
    rep_run["alive"] = all(r["alive"] for r in rs)
    return rep_run


def profile_run(a, env, cells, period_s, seconds=15):
    """perf profile of the agent at one load (separate run: perf's own overhead stays out of the table)."""
    if not shutil.which("perf"):
        return None
    http_port = free_port()
    name = f"profile-{cells}c-{period_s}s"
    cfg = os.path.join(a.tmp, f"{name}.toml")
    agent_config(cfg, a.tmp, name, a.mqtt_port, http_port, a.base, cells, f"{int(period_s * 1000)}ms", "poll")
    p = Proc(name, [BIN, "run", "--config", cfg], a.tmp, env=dict(env, RUST_LOG="warn"))
    data = os.path.join(a.tmp, "perf.data")
    try:
        wait_port(http_port, 20)
        time.sleep(a.warmup)
        r = subprocess.run(["perf", "record", "-F", "499", "-g", "-p", str(p.pid), "-o", data, "--", "sleep",
                            str(seconds)], capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": r.stderr.strip()[-300:]}
    finally:
        p.stop()

    def report(*extra):
        out = sh(["perf", "report", "-i", data, "--stdio", "--percent-limit", "0.5"] + list(extra))
        rows = []
        for line in out.splitlines():
            m = re.match(r"^\s+([0-9.]+)%\s+(?:([0-9.]+)%\s+)?(.*\S)\s*$", line)
            if m and not line.lstrip().startswith(("|", "-")):
                rows.append((float(m.group(1)), m.group(3)))
        return rows

    dso = report("--no-children", "--sort", "dso", "-g", "none")
    syms = report("--no-children", "--sort", "dso,sym", "-g", "none")[:15]
    kids = report("--children", "--sort", "sym", "-g", "none")
    keys = ("__GI___writev", "epoll_wait", "__x64_sys_futex", "__libc_recv", "__GI___libc_read", "recvfrom",
            "finish_task_switch.isra.0", "malloc", "_int_malloc", "_int_free", "alsentry::core::engine::Engine::on_batch",
            "alsentry::io::poller::Link::run", "alsentry::core::payload::DataFilter::payload")
    inclusive = [(pc, sym) for pc, sym in kids if any(k in sym for k in keys)]
    return {"cells": cells, "period_s": period_s, "seconds": seconds, "dso": dso, "syms": syms,
            "inclusive": inclusive}


def progress_counts(proc, log_path, timeout=3.0):
    """The ceiling loop's cumulative counters now; a loop that does not answer ends the stage."""
    j = progress_line(proc, log_path, timeout)
    if j is None:
        raise SystemExit(f"{proc.name}: no progress line within {timeout} s; see {log_path}")
    return j


def run_ceiling_slices(a, env, cells, plan, rounds, slice_s, settle_s):
    """The transport ceiling and alsentry polling back to back, side by side. The bare loop and the
    agent with one and with two worker threads all connect to the same simulator and stay
    connected, but only one runs at a time: the others are stopped (SIGSTOP), their connections
    idle. Each runs for `slice_s` seconds in turn (counted after `settle_s` seconds back, when the
    replies that waited for it are read), round after round, the order rotated every round; each
    round's shares compare slices a few seconds apart. Sequential 20 s runs moved by 20 % with the
    host's speed (the five paired runs of one report ranged 66-101 %), and even adjacent 1-3 s
    slices on a VM move by a quarter, so many short pairs are taken and their median reported.

    A fourth takes its turn too: the same bare loop on alsentry's own Modbus TCP client
    (`modbus_ceiling --client alsentry`), the ceiling of the agent's own transport, so that the
    agent's share of it is the cost of everything else it does.

    Returns the bare loop's figures (the own-client loop's under "own") and each agent's, in the
    shapes of a run (per-round polls/s in `all`, so each share is the median of the rounds'
    shares)."""
    poll = "1ms"
    logs = {"bare": os.path.join(a.tmp, "ceiling-bare.log"), "own": os.path.join(a.tmp, "ceiling-own.log")}
    loop = [CEILING, "--cells", str(cells), "--first-port", str(a.base), "--plan", plan, "--seconds", "0", "--progress"]
    bare = Proc("ceiling-bare", loop, a.tmp)
    systems = [("bare", bare, None)]
    systems.append(("own", Proc("ceiling-own", loop + ["--client", "alsentry"], a.tmp), None))
    try:
        for threads in (1, 2):
            name = f"alsentry-fastest-{threads}t"
            http_port = free_port()
            cfg = os.path.join(a.tmp, f"{name}.toml")
            # Agents connected to one broker at once need their own MQTT client ids (made of [agent] id).
            agent_config(cfg, a.tmp, name, a.mqtt_port, http_port, a.base, cells, poll, "off", True, threads,
                         agent_id=f"bench-{threads}t")
            check = subprocess.run([BIN, "check", "--config", cfg], capture_output=True, text=True)
            if check.returncode != 0:
                raise SystemExit(f"generated config {cfg} does not pass `alsentry check`:\n{check.stdout}{check.stderr}")
            p = Proc(name, [BIN, "run", "--config", cfg], a.tmp, env=dict(env, RUST_LOG="warn"))
            systems.append((threads, p, http_port))
            if not wait_port(http_port, 20):
                raise SystemExit(f"{name}: agent HTTP endpoint did not come up; see {a.tmp}/{name}.log")
        time.sleep(max(2.0, settle_s))  # every connection open, plans learned
        # A cell the bare loop could not connect to is counted once, at start, and never polled:
        # a slower ceiling that would flatter the agent, so it ends the stage.
        for which, p, _ in systems[:2]:
            start = progress_counts(p, logs[which])
            if start["errors"] or not start["polls"]:
                raise SystemExit(f"{p.name} did not poll every cell ({start}); see {logs[which]}")
        for which, p, http_port in systems[2:]:
            c = polls(http_port)
            if not c or not c["ok"]:
                raise SystemExit(f"{p.name} has not polled yet ({c}); see {a.tmp}/{p.name}.log")
        for _, p, _ in systems:
            p.p.send_signal(signal.SIGSTOP)

        def counts(which, p, http_port):
            if which in logs:
                c = progress_counts(p, logs[which])
                return {"ok": c["polls"], "failed": c["errors"]}
            c = polls(http_port)
            if c is None:
                raise SystemExit(f"{p.name}: /metrics did not answer; see {a.tmp}/{p.name}.log")
            return c

        slices = {which: [] for which, _, _ in systems}
        for r in range(rounds):
            k = r % len(systems)
            for which, p, http_port in systems[k:] + systems[:k]:
                p.p.send_signal(signal.SIGCONT)
                time.sleep(settle_s)
                c0, u0, s0, t0 = counts(which, p, http_port), cpu_seconds(p.pid), cpu_seconds(a.sim.pid), \
                    time.monotonic()
                time.sleep(slice_s)
                c1, u1, s1, t1 = counts(which, p, http_port), cpu_seconds(p.pid), cpu_seconds(a.sim.pid), \
                    time.monotonic()
                p.p.send_signal(signal.SIGSTOP)
                d = {key: c1.get(key, 0) - c0.get(key, 0) for key in c1}
                slices[which].append({"seconds": t1 - t0, "cpu_s": u1 - u0, "sim_cpu_s": s1 - s0, "polls": d})
            row = {which: polls_per_s(slices[which][-1]) for which, _, _ in systems}
            print(f"  round {r + 1}/{rounds}: polls/s " + ", ".join(f"{w}: {v:.0f}" for w, v in row.items()) +
                  "; shares " + ", ".join(f"{t}: {row[t] / row['bare'] * 100:.1f} %" for t in ("own", 1, 2) if row["bare"]),
                  flush=True)
    finally:
        for _, p, _ in systems:
            if p.alive():
                p.p.send_signal(signal.SIGCONT)
            p.stop()

    def total(rs):
        keys = {k for r in rs for k in r["polls"]}
        return {"seconds": sum(r["seconds"] for r in rs), "cpu_s": sum(r["cpu_s"] for r in rs),
                "sim_cpu_s": sum(r["sim_cpu_s"] for r in rs),
                "polls": {k: sum(r["polls"].get(k, 0) for r in rs) for k in keys}}

    bt = total(slices["bare"])
    per_round = [polls_per_s(r) for r in slices["bare"]]
    ceiling = {"plan": plan, "reads_per_poll": 1 if plan == "flat16" else 4, "cells": cells,
               "method": "slices", "rounds": rounds, "slice_s": slice_s, "settle_s": settle_s,
               "seconds": bt["seconds"], "polls": bt["polls"]["ok"], "polls_per_s": statistics.median(per_round),
               "all": per_round, "errors": bt["polls"]["failed"], "cores": bt["cpu_s"] / bt["seconds"],
               "sim_cores": bt["sim_cpu_s"] / bt["seconds"]}
    ot = total(slices["own"])
    own_rounds = [polls_per_s(r) for r in slices["own"]]
    ceiling["own"] = {"seconds": ot["seconds"], "polls": ot["polls"]["ok"], "polls_per_s": statistics.median(own_rounds),
                      "all": own_rounds, "errors": ot["polls"]["failed"], "cores": ot["cpu_s"] / ot["seconds"],
                      "sim_cores": ot["sim_cpu_s"] / ot["seconds"]}
    agents = {}
    for threads in (1, 2):
        t = total(slices[threads])
        for k in ("ok", "failed", "missed", "dropped"):
            t["polls"].setdefault(k, 0)
        agents[threads] = dict(
            t, name=f"alsentry-fastest-{threads}t", system="alsentry", cells=cells, period_s=0.001, poll=poll,
            data_mode="off", rules=True, threads=threads, cores=t["cpu_s"] / t["seconds"],
            sim_cores=t["sim_cpu_s"] / t["seconds"],
            all=[polls_per_s(r) for r in slices[threads]], lat=[])
    return ceiling, agents[1], agents[2]


# ---------------------------------------------------------------- Node-RED

NR_DECODE = r"""
// One function node for every cell: keeps the latest of the three small reads of each cell
// (input 20, holding 0-1, holding 10-14) and, on each input 0-15 read, decodes the 22 tags of
// the cell template and publishes one message per poll.
const [dev, part] = msg.topic.split('|');
if (part !== 'in0') { context.set(dev + part, msg.payload); return null; }
const in20 = context.get(dev + 'in20'), h0 = context.get(dev + 'h0'), h10 = context.get(dev + 'h10');
if (!in20 || !h0 || !h10) return null;
const regs = msg.payload.concat([0, 0, 0, 0], in20);
const hold = h0.concat([0, 0, 0, 0, 0, 0, 0, 0], h10);
function f32(r, a, order) {
  let w = [r[a], r[a + 1]];
  if (order === 'CDAB' || order === 'DCBA') w = [w[1], w[0]];
  const b = Buffer.alloc(4); b.writeUInt16BE(w[0], 0); b.writeUInt16BE(w[1], 2);
  if (order === 'BADC' || order === 'DCBA') { b.swap16(); }
  return b.readFloatBE(0);
}
function u32(r, a, order) {
  let w = [r[a], r[a + 1]];
  if (order === 'CDAB') w = [w[1], w[0]];
  return w[0] * 65536 + w[1];
}
const i16 = (x) => (x > 32767 ? x - 65536 : x);
const s = regs[7];
const v = {
  voltage: f32(regs, 0, 'CDAB'), current: f32(regs, 2, 'CDAB'), bath_temp: i16(regs[4]) * 0.1,
  alumina: regs[5] * 0.01, resistance: regs[6] * 0.001, status: s, feeding: s & 1,
  ae_active: (s >> 1) & 1, overfeed: (s >> 2) & 1, underfeed: (s >> 3) & 1, line_low: (s >> 4) & 1,
  heartbeat: regs[8], voltage_mv: regs[9] * 0.001, line_current: f32(regs, 10, 'ABCD'),
  voltage_badc: f32(regs, 12, 'BADC'), resistance_dcba: f32(regs, 14, 'DCBA'),
  line_current_int: regs[20] * 0.1, voltage_target: hold[0] * 0.001, line_setpoint: hold[1] * 0.1,
  feed_count: u32(hold, 10, 'ABCD'), ae_count: hold[12], uptime: u32(hold, 13, 'CDAB'),
};
msg.topic = 'peer/nr/' + dev + '/data';
msg.payload = JSON.stringify({ device: dev, ts: Date.now(), values: v });
return msg;
"""


NR_DECODE_FLAT16 = r"""
// Issue 22's cell: one read of input 0-31 per poll, 16 float32 values (ABCD).
const regs = msg.payload;
const b = Buffer.alloc(4);
const v = {};
for (let k = 0; k < 16; k++) {
  b.writeUInt16BE(regs[2 * k], 0); b.writeUInt16BE(regs[2 * k + 1], 2);
  v['t' + String(k).padStart(2, '0')] = b.readFloatBE(0);
}
const dev = msg.topic.split('|')[0];
msg.topic = 'peer/nr/' + dev + '/data';
msg.payload = JSON.stringify({ device: dev, ts: Date.now(), values: v });
return msg;
"""


def nodered_install(a):
    d = a.nodered_dir
    red = os.path.join(d, "node_modules", "node-red", "red.js")
    mod = os.path.join(d, "node_modules", "node-red-contrib-modbus", "package.json")
    if not (os.path.exists(red) and os.path.exists(mod)):
        os.makedirs(d, exist_ok=True)
        # node-red-contrib-modbus 5.4x+ depends on a fork of modbus-serial served from
        # dl.cloudsmith.io, which this machine cannot reach; the override maps it to the
        # upstream modbus-serial on the npm registry (same API).
        with open(os.path.join(d, "package.json"), "w") as fp:
            json.dump({"name": "alsentry-bench-nodered", "version": "0.0.0", "private": True,
                       "dependencies": {"node-red": "4", "node-red-contrib-modbus": "5.60.2"},
                       "overrides": {"@openp4nr/modbus-serial": "npm:modbus-serial@8.0.25"}}, fp)
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=d,
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"npm install failed: {r.stderr[-2000:]}")
    with open(mod) as f:
        ver = json.load(f)["version"]
    with open(os.path.join(d, "node_modules", "node-red", "package.json")) as f:
        nr_ver = json.load(f)["version"]
    return red, nr_ver, ver


def nodered_flows(a, cells, period_s):
    rate_ms = str(int(round(period_s * 1000)))
    nodes = [{"id": "tab1", "type": "tab", "label": "bench"},
             {"id": "broker", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1",
              "port": str(a.mqtt_port), "clientid": "peer-nr", "autoConnect": True, "usetls": False,
              "protocolVersion": "4", "keepalive": "60", "cleansession": True},
             {"id": "decode", "type": "function", "z": "tab1", "name": "decode",
              "func": NR_DECODE_FLAT16 if CELL == "flat16" else NR_DECODE,
              "outputs": 1, "x": 300, "y": 40, "wires": [["out"]]},
             {"id": "out", "type": "mqtt out", "z": "tab1", "name": "", "topic": "", "qos": "0",
              "retain": "false", "broker": "broker", "x": 500, "y": 40, "wires": []}]
    for i in range(cells):
        dev = f"pot-{i + 1:03}"
        cid = f"client{i}"
        nodes.append({"id": cid, "type": "modbus-client", "name": dev, "clienttype": "tcp",
                      "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False,
                      "failureLogEnabled": False, "tcpHost": "127.0.0.1", "tcpPort": str(a.base + i),
                      "tcpType": "DEFAULT", "serialPort": "", "serialType": "RTU-BUFFERD",
                      "serialBaudrate": "9600", "serialDatabits": "8", "serialStopbits": "1",
                      "serialParity": "none", "serialConnectionDelay": "100",
                      "serialAsciiResponseStartDelimiter": "0x3A", "unit_id": "1", "commandDelay": "1",
                      "clientTimeout": "1000", "reconnectOnTimeout": True, "reconnectTimeout": "2000",
                      "parallelUnitIdsAllowed": True, "showErrors": False, "showWarnings": False,
                      "showLogs": False})
        reads = (("in0", "InputRegister", 0, 16), ("in20", "InputRegister", 20, 1),
                 ("h0", "HoldingRegister", 0, 2), ("h10", "HoldingRegister", 10, 5))
        if CELL == "flat16":
            reads = (("in0", "InputRegister", 0, 32),)
        for part, fc, adr, qty in reads:
            nodes.append({"id": f"read{i}{part}", "type": "modbus-read", "z": "tab1",
                          "name": f"{dev}-{part}", "topic": f"{dev}|{part}", "showStatusActivities": False,
                          "logIOActivities": False, "showErrors": False, "showWarnings": False,
                          "unitid": "1", "dataType": fc, "adr": str(adr), "quantity": str(qty),
                          "rate": rate_ms, "rateUnit": "ms", "delayOnStart": False, "startDelayTime": "",
                          "server": cid, "useIOFile": False, "ioFile": "", "useIOForPayload": False,
                          "emptyMsgOnFail": False, "x": 0, "y": 0, "wires": [["decode"], []]})
    return nodes


def nodered_start(a, name, cells, period_s):
    red = a.nodered_red
    user = os.path.join(a.tmp, f"nr-{name}")
    os.makedirs(user, exist_ok=True)
    flows = os.path.join(user, "flows.json")
    with open(flows, "w") as f:
        json.dump(nodered_flows(a, cells, period_s), f)
    with open(os.path.join(user, "settings.js"), "w") as f:
        f.write("""module.exports = {
  uiHost: "127.0.0.1", uiPort: %d, httpAdminRoot: false, httpNodeRoot: false,
  credentialSecret: false, flowFilePretty: false,
  logging: { console: { level: "warn", metrics: false, audit: false } },
  externalModules: { autoInstall: false },
};
""" % free_port())
    # node-red-contrib-modbus is resolved from the install dir's node_modules.
    env = dict(os.environ, NODE_PATH=os.path.join(a.nodered_dir, "node_modules"))
    shutil.rmtree(os.path.join(user, "node_modules"), ignore_errors=True)
    os.symlink(os.path.join(a.nodered_dir, "node_modules"), os.path.join(user, "node_modules"))
    with open(os.path.join(user, "package.json"), "w") as f:
        json.dump({"name": "bench-nr", "version": "0.0.0",
                   "dependencies": {"node-red-contrib-modbus": "*"}}, f)
    return Proc(name, ["node", red, "--userDir", user, "--settings", os.path.join(user, "settings.js"), flows],
                a.tmp, env=env)


# ---------------------------------------------------------------- criterion results


def criterion_medians():
    base = os.path.join(ROOT, "target", "criterion")
    rows = []
    if not os.path.isdir(base):
        return rows
    for dirpath, _, files in os.walk(base):
        if not dirpath.endswith(os.path.join("new")) or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        median_ns = est["median"]["point_estimate"]
        thr = meta.get("throughput") or {}
        elems = thr.get("Elements")
        mtime = os.path.getmtime(os.path.join(dirpath, "estimates.json"))
        # criterion compares each run with the one before (change/: the relative change of the
        # median); that run's median is shown beside the latest, so a rerun of a noisy benchmark
        # is visible in the report.
        before = None
        change = os.path.join(os.path.dirname(dirpath), "change", "estimates.json")
        if os.path.isfile(change):
            with open(change) as f:
                rel = json.load(f)["median"]["point_estimate"]
            if rel > -1:
                before = median_ns / (1 + rel)
        rows.append((meta.get("full_id") or meta.get("title"), median_ns, elems, mtime, before))
    return sorted(rows)


def by_load_of(runs):
    return {(r["cells"], r["period_s"]): r for r in runs}


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


# ---------------------------------------------------------------- report


def machine():
    model = ""
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    return {
        "model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "rustc": sh(["rustc", "--version"]),
        "mosquitto": sh(["/usr/sbin/mosquitto", "-h"]).splitlines()[0] if os.path.exists("/usr/sbin/mosquitto") else "",
        "python": platform.python_version(),
        "node": sh(["node", "--version"]),
    }


def f(x, spec, none="n/a"):
    return none if x is None else format(x, spec)


def verdict(ok, how):
    return ("**met**" if ok else "**missed**") + f" ({how})"


def cell_text():
    if CELL == "flat16":
        return ("Cell: issue 22's harness cell, **16 float32 tags** (`t00`-`t15`, ABCD) in input registers 0-31, read in "
                "**one request** per poll, served by `examples/flat_cells.rs` (a tokio-modbus server per cell on "
                "consecutive ports; the values drift every 100 ms).")
    return (f"Cell: all **{TAGS_PER_CELL} tags** of `config/templates/cell.toml`, served by `alsentry sim`, read in 4 "
            "requests per poll once the planner has probed the simulator's unmapped registers (its first plan meets "
            "exception 02 and is cut at the longest readable prefixes: input 0-17, 20, holding 0-1, 10-16).")


def ceiling_capped(ceiling):
    """alsentry polls each device at most every 1 ms: too few cells cannot reach a fast ceiling."""
    return ceiling["polls_per_s"] * 0.9 > ceiling["cells"] * 1000


def floor_section(w, runs, floors):
    """Issue 22: every alsentry figure as a ratio to the publishing floor and the bare client."""
    w("## alsentry against the floors")
    w("")
    if not (floors and floors.get("floor") and runs):
        w("not run")
        w("")
        return
    w("Measured in the same run, on the same simulator and broker, at the same loads, interleaved "
      "(alsentry, floor, bare client, then the next repeat):")
    w("")
    w("- **publishing floor**: `examples/publish_floor.rs`: a paced bare tokio-modbus client (one connection "
      "and one tokio interval per cell, `MissedTickBehavior::Skip`: on a fixed grid, a late poll at once, passed slots counted as missed; first polls spread evenly over 40 % of the period, "
      "as alsentry spreads them, but not on alsentry's wake grid, which puts those falling in one step of a twentieth "
      "of the period on one wake-up: a choice of alsentry's schedule that a minimal client does not make) that decodes the cell's tags and publishes the same `alsentry/data/1` JSON message per poll "
      "(same topic shape, same fields, alsentry's number form) through a minimal rumqttc client at QoS 0. No rules, "
      "no windows, no summaries, no outbox: the cost of the job itself.")
    w("- **bare client**: the same example with `--no-publish`: polls on the same schedule, decodes and publishes "
      "nothing.")
    w("- **alsentry**: `alsentry run`, rules, summaries (every 10 s, a sixth of the shipped default, so each window holds summary rounds) and per-poll data on, alarms through the outbox.")
    w("")
    w("Each figure is the median of the repeats (per metric); ratio = alsentry ÷ floor.")
    w("")
    fl = by_load_of(floors["floor"])
    ba = by_load_of(floors["bare"])

    def ratio(x, y):
        return f(x / y if (x is not None and y) else None, ".2f") + "×"

    w("| Load | metric | alsentry | publishing floor | bare client | alsentry ÷ floor | alsentry ÷ bare |")
    w("|---|---|---|---|---|---|---|")
    for r in runs:
        key = (r["cells"], r["period_s"])
        fr, br = fl.get(key), ba.get(key)
        if not (fr and br):
            continue
        load = f"{r['cells']} cells @ {1 / r['period_s']:g} Hz"
        for label, k, scale, spec in (("CPU µs / tag sample", "median_cpu_us_per_sample", 1, ".2f"),
                                      ("CPU (cores)", "median_cores", 1, ".3f"),
                                      ("RSS steady (MiB)", "median_rss_kib", 1 / 1024, ".1f"),
                                      ("RSS peak (MiB)", "median_hwm_kib", 1 / 1024, ".1f")):
            x, y, z = (q.get(k) for q in (r, fr, br))
            w(f"| {load} | {label} | {f(x * scale if x is not None else None, spec)} | "
              f"{f(y * scale if y is not None else None, spec)} | {f(z * scale if z is not None else None, spec)} | "
              f"{ratio(x, y)} | {ratio(x, z)} |")
        done = [q["polls"]["ok"] / q["scheduled"] * 100 if q.get("scheduled") else None for q in (r, fr, br)]
        w(f"| {load} | polls done (% of scheduled; failed, missed) | {f(done[0], '.1f')} % ({r['polls']['failed']}, "
          f"{r['polls']['missed']}) | {f(done[1], '.1f')} % ({fr['polls']['failed']}, {fr['polls']['missed']}) | "
          f"{f(done[2], '.1f')} % ({br['polls']['failed']}, {br['polls']['missed']}) | | |")
        w(f"| {load} | data message (bytes, mean) | {f(r.get('median_msg_bytes'), '.0f')} | "
          f"{f(fr.get('median_msg_bytes'), '.0f')} | - | {ratio(r.get('median_msg_bytes'), fr.get('median_msg_bytes'))} | |")
    w("")
    w("Per repeat (CPU µs / tag sample), to judge the noise:")
    w("")
    w("| Load | alsentry | publishing floor | bare client |")
    w("|---|---|---|---|")
    for r in runs:
        key = (r["cells"], r["period_s"])
        cells = [", ".join(f(x, ".2f") for x in q["all_us"]) if q else "" for q in (r, fl.get(key), ba.get(key))]
        w(f"| {r['cells']} cells @ {1 / r['period_s']:g} Hz | {cells[0]} | {cells[1]} | {cells[2]} |")
    w("")


def write_report(a, mach, load_start, load_end, started, runs, diags, ceiling, minimal, fast, prof, peers, notes, out,
                 floors=None):
    L = []
    w = L.append
    w("# alsentry benchmarks")
    w("")
    w("_Generated by `bench/e2e.py`; do not edit by hand. Rerun to regenerate._")
    w("")
    if a.quick or PROFILE != "release":
        w(f"> **Smoke run, not the benchmark:** {'`--quick` (1 repeat, short windows, 20 cells)' if a.quick else ''}"
          f"{', ' if a.quick and PROFILE != 'release' else ''}{f'profile `{PROFILE}`' if PROFILE != 'release' else ''}. "
          "It shows the harness runs; its figures are not the ones to quote. Regenerate with the command below.")
        w("")
    w("## How to run")
    w("")
    w("```sh")
    w("cargo bench --bench engine --bench core --bench outbox --bench core_stats   # criterion, ~12 min with its build")
    w("# (first: cargo bench rebuilds target/release/alsentry with the default features)")
    w("cargo build --release --no-default-features --bin alsentry \\")
    w("    --example modbus_ceiling --example publish_floor --example flat_cells   # the gateway build")
    w("python3 bench/e2e.py            # flat16 cell, 3 repeats, writes this file (~18 min; --peers adds ~11)")
    w("```")
    w("")
    dur = getattr(a, "duration_min", None)
    w(f"Invocation this time: `{' '.join(sys.argv)}`" + (f" ({dur:.0f} min)" if dur else ""))
    w("")
    w("## Machine and conditions")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| Date | {started} UTC |")
    w(f"| CPU | {mach['model']}, {mach['cores']} cores |")
    w(f"| Memory | {mach['mem_gib']} GiB; kernel {mach['kernel']} |")
    w(f"| Load average | {load_start} at start, {load_end} at end |")
    w(f"| Toolchain | {mach['rustc']}; Python {mach['python']}; Node {mach['node']}; {mach['mosquitto']} |")
    w(f"| Binary | `{os.path.relpath(BIN, ROOT)}`: profile `{PROFILE}` ({profile_flags(PROFILE)}), {getattr(a, 'build_kind', None) or build_kind()}; "
      f"RUSTFLAGS at measuring time: `{os.environ.get('RUSTFLAGS', '')}` |")
    sim = "`examples/flat_cells.rs`" if CELL == "flat16" else "`alsentry sim` (100 ms model tick)"
    w(f"| Layout | all on 127.0.0.1: {sim} (cells on ports {a.base}-{a.base + a.max_cells - 1}), Mosquitto on :{a.mqtt_port}, one paho subscriber (in the harness) counting every data message and timing alarms |")
    w(f"| Per run | {a.warmup:.0f} s warm-up, then a {a.window:.0f} s steady window, {a.repeat} repeat(s) per load and system; CPU = utime+stime of the measured process from /proc/<pid>/stat over the window |")
    w("")
    w("**Noise:** the simulator, Mosquitto and the subscriber run on the same 2 cores as the process "
      "measured, and anything else running on the machine shows in the load average above. CPU is "
      "counted in 10 ms clock ticks; the per-repeat table shows the spread. Ratios between systems "
      "measured interleaved in the same run are more trustworthy than absolutes. Criterion figures "
      "are medians.")
    w("")
    w(cell_text())
    w("")
    floor_section(w, runs, floors)
    w("## End to end: alsentry")
    w("")
    w(f"Rules: {FLAT16_RULE_DESC if CELL == 'flat16' else RULE_DESC}. `[data] mode = \"poll\"` (one JSON message per poll on `.../data`), summaries every 10 s (so every window has summary rounds and their memory), "
      "alarms through the durable outbox; data at QoS 0 around it (`data_qos = 0`, the default; the outbox takes data only while the broker is away). "
      "Each row is the repeat with the median CPU per tag sample; alarm latencies are pooled over the repeats.")
    w("")
    w("| Load | Polls scheduled | completed (ok) | failed | missed | Tag samples/s | CPU (cores) | CPU µs / tag sample | RSS steady (MiB; anonymous part) | RSS peak VmHWM (MiB) | Data msgs received | Alarm latency p50 / p90 / p99 / max (ms, n) | Sim CPU (cores) |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        p = r["polls"]
        lat = r["lat"]
        w(f"| {r['cells']} cells @ {1 / r['period_s']:g} Hz | {r['scheduled']:.0f} | {p['ok']} | {p['failed']} | {p['missed']} | "
          f"{r['samples'] / r['seconds']:.0f} | {r['cores']:.3f} | {f(r['cpu_us_per_sample'], '.2f')} | "
          f"{r['rss_kib'] / 1024:.1f} ({f((r.get('anon_kib') or 0) / 1024, '.1f')}) | {r['hwm_kib'] / 1024:.1f} | {r['msgs']} | "
          f"{f(pct(lat, 50), '.1f')} / {f(pct(lat, 90), '.1f')} / {f(pct(lat, 99), '.1f')} / {f(max(lat) if lat else None, '.1f')} ({len(lat)}) | {r['sim_cpu_s'] / r['seconds']:.3f} |")
    w("")
    w("Alarm latency = subscriber receive time − the alarm payload's `ts` (the transition time the engine "
      "stamps when it processes the poll's batch, ms resolution), for the probe rule `lat`. It covers "
      "engine → outbox (disk) → MQTT → Mosquitto → subscriber; the hop poller → engine (an in-process "
      "channel) is not in it because the payload carries no separate sample time.")
    w("")
    if diags:
        dc = diags[0]["cells"]
        w(f"### Variants at {dc} cells @ 1 Hz (what the rules and the data stream cost; one run each)")
        w("")
        w("| Variant | CPU (cores) | CPU µs / tag sample | RSS steady (MiB) | RSS peak (MiB) | Alarm latency p50 / p90 / p99 / max (ms, n) |")
        w("|---|---|---|---|---|---|")
        full = by_load_of(runs).get((dc, 1.0))
        for r in ([full] if full else []) + diags:
            lat = r["lat"]
            what = {"poll": "as in the table (rules + data per poll)"}.get(r["data_mode"], "")
            if r["data_mode"] == "off":
                what = "rules, data off" if r.get("rules", True) else "no rules, data off (acquisition only)"
            w(f"| {what} | {r['cores']:.3f} | {f(r['cpu_us_per_sample'], '.2f')} | {r['rss_kib'] / 1024:.1f} | "
              f"{r['hwm_kib'] / 1024:.1f} | {f(pct(lat, 50), '.1f')} / {f(pct(lat, 90), '.1f')} / "
              f"{f(pct(lat, 99), '.1f')} / {f(max(lat) if lat else None, '.1f')} ({len(lat)}) |")
        w("")
    w("## Transport ceiling")
    w("")
    if ceiling and fast and ceiling["polls_per_s"] > 0:
        cps = ceiling["polls_per_s"]
        variants = ([fast["one_thread"]] if fast.get("one_thread") else []) + [fast]
        paired = all(ceiling_pairs(ceiling, v) for v in variants)
        reps = len(ceiling.get("all") or [cps])
        if ceiling.get("method") == "slices":
            spread = "the quartiles" if reps >= 4 else "every round's"
            own_loop = ("the same loop on alsentry's own Modbus TCP client (`--client alsentry`), "
                        if ceiling.get("own") else "")
            how = (f"They ran side by side, one at a time, in {reps} rounds: each round the bare loop (on "
                   f"tokio's default runtime, a worker per core), {own_loop}and alsentry with one and with two worker "
                   f"threads ran in turn (the order rotated every round) for {ceiling['slice_s']:g} s each, counted "
                   f"after {ceiling['settle_s']:g} s back, the others stopped (SIGSTOP) with their connections to the "
                   "same simulator open. Each polls/s figure is the median of the rounds' slices (the lowest and "
                   "highest in brackets); each share of the ceiling is the median of the rounds' shares, each "
                   f"alsentry slice against the bare loop's of its own round ({spread} in brackets). The host's "
                   "speed moves within seconds on this VM, so single runs, even adjacent ones, are not comparable; "
                   "the median of many short pairs is. alsentry's polls count only those whose samples reached its "
                   "engine: flat out, a poller drops a batch that finds the engine's queue full. The failed, missed "
                   "and dropped columns add up the counted windows of all rounds: a request in flight when an agent "
                   "was stopped may time out when it resumes (its deadline passed while it was stopped), and such "
                   "failures fall in the settle time before the window.")
        else:
            order = ("bare loop, alsentry with one worker thread, with two; the next repeat in reverse order, and so on"
                     if fast.get("one_thread") else "bare loop, then alsentry")
            how = (f"Each polls/s figure is the median of {reps} run(s), every run's in brackets, the systems "
                   f"interleaved ({order}); each share of the ceiling is the median of the runs' shares, each "
                   "alsentry run against the bare loop of its own repeat. alsentry's polls count only those whose "
                   "samples reached its engine: flat out, a poller drops a batch that finds the engine's queue full "
                   "(the median run's count is in the last column)." if paired else
                   "One run of each (results of an older harness: no per-repeat pairs).")
        w(f"`{os.path.relpath(CEILING, ROOT)} --cells {ceiling['cells']} --plan {ceiling['plan']}`: a bare tokio-modbus "
          f"client, one connection per cell, polls back to back with no decoding or publishing, with the same "
          f"{ceiling['reads_per_poll']} read(s) per poll alsentry's planner settles on for this device (also what a "
          f"hand-written client would use). {how}")
        w("")

        sliced = ceiling.get("method") == "slices"

        def runs_text(r, key):
            al = r.get("all") or [key(r)]
            if sliced:
                return f"{min(al):.0f}-{max(al):.0f}"
            return ", ".join(f"{x:.0f}" for x in al)

        def shares_text(v):
            ps = ceiling_pairs(ceiling, v)
            if not ps or len(ps) < 2:
                return ""
            if sliced and len(ps) >= 4:
                q = statistics.quantiles(ps, n=4)
                return f" [{q[0] * 100:.1f}-{q[2] * 100:.1f}]"
            return f" [{', '.join(f'{x * 100:.1f}' for x in ps)}]"

        def shares_text_own(v):
            ps = ceiling_pairs(ceiling["own"], v)
            if not ps or len(ps) < 4:
                return ""
            q = statistics.quantiles(ps, n=4)
            return f" (quartiles {q[0] * 100:.1f}-{q[2] * 100:.1f})"

        w("| | reads/poll | polls/s (median) | share of the ceiling (median) | tag samples/s | CPU (cores) | failed | missed | batches dropped |")
        w("|---|---|---|---|---|---|---|---|---|")
        for c in [ceiling]:
            w(f"| bare tokio-modbus loop, plan {c['plan']}, {c['cells']} cells | {c['reads_per_poll']} | {c['polls_per_s']:.0f} [{runs_text(c, lambda x: x['polls_per_s'])}] | 100 % | {c['polls_per_s'] * TAGS_PER_CELL:.0f} | {c.get('cores', 0):.2f} | {c['errors']} | - | - |")
        own = ceiling.get("own")
        if own:
            w(f"| the same loop on alsentry's own Modbus TCP client (`--client alsentry`) | {ceiling['reads_per_poll']} | {own['polls_per_s']:.0f} [{runs_text(own, lambda x: x['polls_per_s'])}] | {ceiling_share(ceiling, dict(own, polls={'ok': own['polls']})) * 100:.1f} %{shares_text(own)} | {own['polls_per_s'] * TAGS_PER_CELL:.0f} | {own['cores']:.2f} | {own['errors']} | - | - |")
        for v in variants:
            vps = statistics.median(v["all"]) if sliced else polls_per_s(v)
            w(f"| alsentry, {v['cells']} cells, poll = \"{v['period_s'] * 1000:g}ms\" (polls back to back), worker_threads = {v.get('threads', 1)}, data mode {v['data_mode']} | {ceiling['reads_per_poll']} | {vps:.0f} [{runs_text(v, polls_per_s)}] | {ceiling_share(ceiling, v) * 100:.1f} %{shares_text(v)} | {vps * TAGS_PER_CELL:.0f} | {v['cores']:.2f} | {v['polls']['failed']} | {v['polls']['missed']} | {v['polls'].get('dropped', 0)} |")
        w("")
        judged = fast.get("one_thread") or fast
        what = "in its default configuration (worker_threads = 1)" if fast.get("one_thread") else \
            f"with worker_threads = {fast.get('threads', 1)} (the default single thread was not run)"
        w(f"alsentry at fastest polling {what} = **{ceiling_share(ceiling, judged) * 100:.1f} %** of the ceiling for "
          f"the same reads. The bare loop does nothing but the requests; the agent also decodes {TAGS_PER_CELL} tags, "
          "evaluates the rules and keeps its metrics for every poll, on the same 2 cores as the simulator: flat out "
          "both are saturated, so whatever CPU a client spends per poll is taken from the simulator.")
        if own:
            # The agent against the loop on its own client: what its work besides the transport costs.
            w("")
            w(f"alsentry reads Modbus TCP with a client of its own (`src/core/mbap.rs`, `src/io/modbus.rs`: no request "
              "enum, no framed codec, no vector per reply, and no read that finds the socket empty), so part of its "
              "share above is a cheaper transport, not less work. Against the bare loop on that same client, "
              f"alsentry {what} reaches **{ceiling_share(own, judged) * 100:.1f} %**{shares_text_own(judged)}: "
              "that is what everything but the transport (scheduling, decoding, the engine, metrics) costs."
              + (" Above 100 %, that cost is smaller than what separates the two otherwise: the loops run tokio's "
                 "default runtime (a worker per core, so on 2 cores their second worker competes with the simulator) "
                 "and alsentry its single worker, and the rounds' shares spread as the quartiles show; it does not "
                 "mean alsentry's own work is free (the CPU per poll below, and `hot_counts.py --callgrind --ceiling "
                 "--ceiling-client alsentry`, count it)." if ceiling_share(own, judged) > 1 else ""))
        done = judged["polls"]["ok"] - judged["polls"].get("dropped", 0)
        if sliced and ceiling.get("polls") and done > 0 and not ceiling_capped(ceiling):
            # CPU per poll over all slices: what a share of the ceiling allows the agent to spend.
            bare_us = ceiling["cores"] * ceiling["seconds"] / ceiling["polls"] * 1e6
            mine_us = judged["cpu_s"] / done * 1e6
            w("")
            w(f"Over all slices the bare loop spent {bare_us:.2f} µs of CPU per poll (user and kernel) and alsentry "
              f"{mine_us:.2f} µs: {mine_us - bare_us:.2f} µs more for its work per poll, where 90 % of the ceiling "
              f"allows {bare_us / 0.9 - bare_us:.2f} µs (both clients at about one core, so polls/s go as one over "
              "the CPU per poll)."
              + (f" The simulator used {ceiling['sim_cores']:.2f} core while the bare loop ran, "
                 f"{judged['sim_cores']:.2f} while alsentry did." if "sim_cores" in judged else "")
              + " `bench/hot_counts.py --callgrind --ceiling` counts the user-space instructions of each per poll, "
              "repeatable whatever the host does.")
        if ceiling_capped(ceiling):
            w("")
            w(f"**Not comparable here:** alsentry's shortest poll interval is 1 ms, so {ceiling['cells']} cells poll at "
              f"most {ceiling['cells'] * 1000} times a second, less than 90 % of this ceiling; measure with more cells.")
    else:
        w("not run")
    w("")
    w(f"## Peers (same job: poll the same simulator, decode {TAGS_PER_CELL} tags, publish one JSON message per poll)")
    w("")
    if not peers:
        w("not run (`--peers` measures them)")
    w("")
    w("| System | Load | Polls scheduled | completed (messages received) | CPU (cores) | CPU µs / tag sample | RSS steady (MiB) | peak (MiB) | alsentry µs / tag sample (same load) | peer / alsentry |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    by_load = {(r["cells"], r["period_s"]): r for r in runs}
    for r in peers:
        base = by_load.get((r["cells"], r["period_s"]))
        if r.get("pair_ratio"):
            ours = f"{f(r['pair_alsentry_us'], '.2f')} (the run right after)"
            ratio = f"{r['pair_ratio']:.1f}× (median pair; pairs " + ", ".join(f"{x:.1f}" for x in r["all"]) + ")"
        else:
            q = (r["cpu_us_per_sample"] / base["cpu_us_per_sample"]) if (base and r["cpu_us_per_sample"] and base["cpu_us_per_sample"]) else None
            ours = f(base["cpu_us_per_sample"] if base else None, ".2f")
            ratio = f"{f(q, '.1f')}×"
        w(f"| {r['system']} | {r['cells']} cells @ {1 / r['period_s']:g} Hz | {r['scheduled']:.0f} | {r['completed']} | {r['cores']:.3f} | "
          f"{f(r['cpu_us_per_sample'], '.2f')} | {r['rss_kib'] / 1024:.1f} | {r['hwm_kib'] / 1024:.1f} | "
          f"{ours} | {ratio} |")
    w("")
    if any(r.get("pair_ratio") for r in peers):
        w(f"At 400 cells @ 1 Hz each peer ran {a.repeat} times, each run followed at once by alsentry at the same "
          "load (same config as the runs above); the row is the pair with the median ratio. Other loads: one peer "
          "run against the median alsentry run of the first table.")
        w("")
    if CELL == "flat16":
        w("The pymodbus peer: `bench/peer_pymodbus.py --cell flat16` (asyncio, one connection per cell, one read of "
          "input 0-31, paho loop thread). Node-RED: flows generated by the harness (one modbus-client and one "
          "modbus-read node per cell, one shared function node decoding the 16 float32 values, one mqtt out node), "
          "installed from npm into a temp dir. Peers run no rules, no windows and no outbox.")
    else:
        w("The pymodbus peer: `bench/peer_pymodbus.py` (asyncio, one connection per cell, paho loop thread; it reads "
          "and decodes the 22 tags the template had before beam_position, tapping, anode_change, feed_request and "
          "quench_request were added). "
          "Node-RED: flows generated by the harness (one modbus-client per cell, four modbus-read nodes per cell, one "
          "shared function node joining them per cell and decoding the same 22 tags, one mqtt out node), "
          "installed from npm into a temp dir. Peers run no rules, no windows and no outbox.")
    w("")
    for n in notes:
        w(f"- {n}")
    if notes:
        w("")
    w("## Where the agent's CPU goes")
    w("")
    if prof and "dso" in prof:
        w(f"`perf record -F 499 -g` on the agent for {prof['seconds']} s at {prof['cells']} cells @ {1 / prof['period_s']:g} Hz "
          "(a separate run, same config as the table). Share of samples:")
        w("")
        w("| Where (self time by DSO) | share |")
        w("|---|---|")
        for pc, name in prof["dso"]:
            w(f"| `{name}` | {pc:.1f} % |")
        w("")
        w("| Inclusive (self + callees) | share |")
        w("|---|---|")
        for pc, name in prof["inclusive"]:
            w(f"| `{name}` | {pc:.1f} % |")
        w("")
        w("| Top symbols (self) | share |")
        w("|---|---|")
        for pc, name in prof["syms"]:
            w(f"| `{name}` | {pc:.1f} % |")
    elif prof:
        w(f"perf failed: {prof.get('error')}")
    else:
        w("not profiled (perf missing or stage skipped)")
    w("")
    w("## Criterion medians")
    w("")
    crit = criterion_medians()
    if crit:
        w("From `target/criterion/*/new/estimates.json` (the latest `cargo bench` run on this machine; each row "
          "is the median time per iteration), and the median of the run before it on this machine where the "
          "benchmark ran more than once (from criterion's `change/`): on a VM the same code can measure several "
          "times slower in a slow phase of the host.")
        w("")
        w("| Benchmark | median / iteration | throughput | measured | the run before |")
        w("|---|---|---|---|---|")

        def when(t):
            return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")

        for name, ns, elems, mtime, before in crit:
            rate = elems / ns * 1e9 if elems else 0
            thr = (f"{rate / 1e6:.2f} M elements/s" if rate >= 1e5 else f"{rate:,.0f} elements/s") if elems else ""
            prev = fmt_ns(before) if before else "-"
            w(f"| `{name}` | {fmt_ns(ns)} | {thr} | {when(mtime)} | {prev} |")
    else:
        w("No criterion results in target/criterion (run the `cargo bench` line above).")
    w("")
    w("Engine bench (`benches/engine.rs`): `Engine::on_batch` with one batch = one poll of one cell (22 tag "
      "samples), 4 rules on each watched analog tag (high, slope over 600 s, noise over 600 s, frozen over 600 s "
      "or predict over 600 s), 1 s polling, so every windowed rule spans 600 samples; windows filled before "
      "measuring. Throughput is tag samples per second on one core.")
    w("")
    w("## Simulator")
    w("")
    sim_md = os.path.join(ROOT, "bench", "sim-figures.md")
    if os.path.exists(sim_md):
        w("| | |")
        w("|---|---|")
        with open(sim_md) as fsim:
            for line in fsim:
                if "Simulator CPU" in line or "Resident memory" in line or line.startswith("| Load"):
                    w(line.rstrip())
        w("")
        w("(from `bench/sim-figures.md`; the simulator's own CPU during each end-to-end run is in the last column above)")
    w("")
    w("## Targets")
    w("")
    w("| Target | Result | Verdict |")
    w("|---|---|---|")
    fl_by = by_load_of((floors or {}).get("floor") or [])
    for key in ((400, 1.0), (400, 0.1)):
        r, fr = by_load.get(key), fl_by.get(key)
        if r and fr and fr.get("median_cpu_us_per_sample") and r.get("median_cpu_us_per_sample"):
            q = r["median_cpu_us_per_sample"] / fr["median_cpu_us_per_sample"]
            w(f"| {key[0]} cells @ {1 / key[1]:g} Hz: ≤ 1.5× the publishing floor's CPU per tag sample (issue 22) | "
              f"{q:.2f}× ({r['median_cpu_us_per_sample']:.2f} against {fr['median_cpu_us_per_sample']:.2f} µs) | "
              f"{verdict(q <= 1.5, f'{q / 1.5:.2f}× the bound')} |")
        else:
            w(f"| {key[0]} cells @ {1 / key[1]:g} Hz: ≤ 1.5× the publishing floor's CPU per tag sample (issue 22) | "
              "not measured at this load | **not measured** |")
    r400 = by_load.get((400, 1.0))
    for system, bound in (("pymodbus+paho", 4), ("Node-RED", 10)):
        pr = next((p for p in peers if p["system"] == system and p["cells"] == 400 and p["period_s"] == 1.0), None)
        if pr and pr.get("pair_ratio"):
            q = pr["pair_ratio"]
            w(f"| 400 cells @ 1 Hz: ≥ {bound}× less CPU per tag sample than {system} (issue 22), median of "
              f"{len(pr['all'])} pairs | {q:.1f}× | {verdict(q >= bound, f'{q / bound:.2f}× the target')} |")
        elif r400 and pr and pr["cpu_us_per_sample"] and r400.get("median_cpu_us_per_sample"):
            q = pr["cpu_us_per_sample"] / r400["median_cpu_us_per_sample"]
            w(f"| 400 cells @ 1 Hz: ≥ {bound}× less CPU per tag sample than {system} (issue 22) | {q:.1f}× | "
              f"{verdict(q >= bound, f'{q / bound:.2f}× the target')} |")
    nr400 = next((p for p in peers if p["system"] == "Node-RED" and p["cells"] == 400 and p["period_s"] == 1.0), None)
    if nr400 and nr400.get("pair_ratio"):
        ratio = nr400["pair_ratio"]
        w(f"| 400 cells @ 1 Hz: ≥ 20× less CPU per tag sample than Node-RED | {ratio:.1f}× | {verdict(ratio >= 20, f'{ratio / 20:.2f}× the target')} |")
    elif r400 and nr400 and nr400["cpu_us_per_sample"] and r400["cpu_us_per_sample"]:
        ratio = nr400["cpu_us_per_sample"] / r400["cpu_us_per_sample"]
        w(f"| 400 cells @ 1 Hz: ≥ 20× less CPU per tag sample than Node-RED | {ratio:.1f}× | {verdict(ratio >= 20, f'{ratio / 20:.2f}× the target')} |")
    else:
        w("| 400 cells @ 1 Hz: ≥ 20× less CPU per tag sample than Node-RED | Node-RED not measured | **not measured** |")
    if r400:
        mib = r400["hwm_kib"] / 1024
        w(f"| 400 cells @ 1 Hz: < 16 MiB RSS | steady {r400['rss_kib'] / 1024:.1f} MiB, peak {mib:.1f} MiB | {verdict(mib < 16, f'{16 - mib:+.1f} MiB headroom on the peak')} |")
    r410 = by_load.get((400, 0.1))
    if r410:
        p = r410["polls"]
        every = p["failed"] == 0 and p["missed"] == 0 and p["ok"] >= 0.98 * r410["scheduled"]
        share = p["ok"] / r410["scheduled"] * 100
        cores = r410.get("median_cores") or r410["cores"]
        budget = cores / 0.15 * 100
        w(f"| 400 cells @ 10 Hz: every scheduled poll completed on < 0.15 core ({TAGS_PER_CELL}-tag cell; issue 22) | {p['ok']} / {r410['scheduled']:.0f} ok, {p['failed']} failed, {p['missed']} missed; {cores:.3f} cores (median) | "
          f"{verdict(every and cores < 0.15, f'polls {share:.1f} % of scheduled, CPU {budget:.0f} % of the 0.15-core budget')} |")
        peak = (r410.get("median_hwm_kib") or r410["hwm_kib"]) / 1024
        w(f"| 400 cells @ 10 Hz, data on: RSS ≤ 16 MiB (issue 22) | peak {peak:.1f} MiB (median) | "
          f"{verdict(peak <= 16, f'{16 - peak:+.1f} MiB headroom')} |")
    if ceiling and fast and ceiling["polls_per_s"] > 0:
        # The default configuration is judged; two worker threads are a variant (see the ceiling section).
        rows = [(fast, "", "worker_threads = 2")]
        if fast.get("one_thread"):
            rows = [(fast["one_thread"], "", "worker_threads = 1 (the default)"), (fast, "(variant) ", "worker_threads = 2")]
        for v, lead, what in rows:
            frac = ceiling_share(ceiling, v)
            how = verdict(frac >= 0.9, f"{(frac - 0.9) * 100:+.1f} points")
            if ceiling_capped(ceiling):
                how = "**not comparable** (too few cells for a 1 ms poll interval to reach the ceiling)"
            n_pairs = len(ceiling_pairs(ceiling, v) or [1])
            pairs = "rounds of side-by-side slices" if ceiling.get("method") == "slices" else "paired runs"
            w(f"| {lead}≥ 90 % of the transport ceiling (the bare tokio-modbus loop): alsentry polling back to back, {what}, "
              f"{f'median of {n_pairs} {pairs}' if n_pairs > 1 else 'one run'} | {frac * 100:.1f} % | {how} |")
        if ceiling.get("own") and not ceiling_capped(ceiling) and not ceiling_capped(dict(ceiling, **ceiling["own"])):
            v = fast.get("one_thread") or fast
            w(f"| (context, no target) the same against the bare loop on alsentry's own Modbus TCP client | "
              f"{ceiling_share(ceiling['own'], v) * 100:.1f} % | what all but the transport costs (see the ceiling section) |")
    # The 0-rule case is the baseline (windows and summaries only), not a rule-engine figure.
    eng = [(n, ns, e, before) for n, ns, e, _, before in crit
           if n.startswith("engine_on_batch/") and "_0x4rules" not in n] if crit else []
    for n, ns, e, before in eng:
        rate = e / ns * 1e9
        prev = f" (the run before: {e / before * 1e9 / 1e6:.2f} M/s)" if before else ""
        w(f"| engine ≥ 2 M tag samples/s (`{n.split('/', 1)[1]}`) | {rate / 1e6:.2f} M/s{prev} | {verdict(rate >= 2e6, f'{rate / 2e6:.2f}× the target')} |")
    lat_all = [(r, pct(r["lat"], 99)) for r in runs if r["lat"]]
    for r, p99 in lat_all:
        w(f"| alarm poll-to-publish p99 < 10 ms ({r['cells']} cells @ {1 / r['period_s']:g} Hz) | {p99:.1f} ms (n={len(r['lat'])}) | {verdict(p99 < 10, f'{10 - p99:+.1f} ms margin')} |")
    for r in diags:
        if r["lat"]:
            p99 = pct(r["lat"], 99)
            w(f"| (variant) alarm p99 < 10 ms, {r['cells']} cells @ {1 / r['period_s']:g} Hz, data stream off | {p99:.1f} ms (n={len(r['lat'])}) | {verdict(p99 < 10, f'{10 - p99:+.1f} ms margin')} |")
    w("")
    with open(out, "w") as fo:
        fo.write("\n".join(L) + "\n")


# ---------------------------------------------------------------- main


def parse_loads(text):
    return [(int(c), float(p)) for c, p in (x.split("x") for x in text.split(",") if x)]


def start_sim(a):
    if CELL == "flat16":
        return Proc("sim", flat_scenario_argv(a.base, a.max_cells), a.tmp)
    scen = os.path.join(a.tmp, "scenario.toml")
    scenario(scen, a.base, a.max_cells)
    return Proc("sim", [BIN, "sim", "--scenario", scen], a.tmp)


def run_three_ways(a, env, loads):
    """alsentry, the publishing floor and the bare client at each load, --repeat times, the
    three interleaved so a change in the machine's load hits them alike. Returns
    {system: [median-representative run per load]} plus every raw run."""
    raw = {"alsentry": [], "floor": [], "bare": []}
    for cells, period in loads:
        per = {"alsentry": [], "floor": [], "bare": []}
        for rep_i in range(a.repeat):
            tag = f"{cells} cells @ {1 / period:g} Hz, repeat {rep_i + 1}/{a.repeat}"
            print(f"run alsentry, {tag}", flush=True)
            r = agent_run(a, env, f"alsentry-{cells}c-{period}s-r{rep_i}", cells, period)
            print(f"  {r['polls']} cpu {r['cores']:.3f} cores, {f(r['cpu_us_per_sample'], '.2f')} µs/sample, "
                  f"rss {r['rss_kib'] / 1024:.1f} MiB, lat n={len(r['lat'])} p99={f(pct(r['lat'], 99), '.1f')}", flush=True)
            per["alsentry"].append(r)
            for kind, publish in (("floor", True), ("bare", False)):
                print(f"run {kind}, {tag}", flush=True)
                r = floor_run(a, cells, period, publish)
                print(f"  {r['polls']} cpu {r['cores']:.3f} cores, {f(r['cpu_us_per_sample'], '.2f')} µs/sample, "
                      f"rss {r['rss_kib'] / 1024:.1f} MiB", flush=True)
                per[kind].append(r)
        for k, rs in per.items():
            raw[k].append(representative(rs))
    return raw


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per load and system; the median is reported")
    ap.add_argument("--cell", choices=("flat16", "cell"), default="flat16",
                    help="flat16: issue 22's 16-float32 cell (examples/flat_cells.rs); cell: `alsentry sim`'s potline cell")
    ap.add_argument("--profile", default="release", help="cargo profile whose target/<profile>/ binaries are measured")
    ap.add_argument("--bin", default="", help="the alsentry binary (default target/<profile>/alsentry)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~2 min): 1 repeat, 3+6 s windows, 20 cells, no variants, no profile, no peers")
    ap.add_argument("--peers", action="store_true", help="also measure the pymodbus+paho peer and Node-RED")
    ap.add_argument("--no-nodered", action="store_true")
    ap.add_argument("--no-python", action="store_true")
    ap.add_argument("--only", default="", help="comma list of stages: alsentry,diag,ceiling,profile,python,nodered")
    ap.add_argument("--nodered-dir", default=os.path.join(tempfile.gettempdir(), "alsentry-bench-nodered"))
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--loads", default="", help="comma list of CELLSxPERIOD, e.g. 400x1.0,400x0.1")
    ap.add_argument("--ceiling-cells", type=int, default=400,
                    help="cells of the ceiling stage (the transport ceiling and alsentry polling back to back); "
                         "alsentry's 1 ms shortest interval caps it at 1000 polls/s per cell, so a fast ceiling "
                         "needs several hundred (default 400)")
    ap.add_argument("--ceiling-rounds", type=int, default=20,
                    help="rounds of the ceiling stage: in each, the bare loop and alsentry with one and with two "
                         "worker threads run one at a time for a slice each (default 20)")
    ap.add_argument("--ceiling-slice", type=float, default=2.0,
                    help="seconds each system runs per round of the ceiling stage (default 2)")
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="only rewrite the report from a kept run's results.json (and the current criterion results)")
    a = ap.parse_args()
    if a.ceiling_rounds < 1 or not a.ceiling_slice > 0:
        ap.error("--ceiling-rounds must be at least 1 and --ceiling-slice above 0")
    set_build(a)
    set_cell(a.cell)
    if a.quick:
        a.warmup, a.window, a.repeat, a.ceiling_cells = 3.0, 6.0, 1, 20
        a.ceiling_rounds, a.ceiling_slice = 3, 1.0
    if a.render:
        with open(a.render) as fr:
            res = json.load(fr)
        meta = res["meta"]
        a.base, a.mqtt_port, a.max_cells = meta["base"], meta["mqtt_port"], meta["max_cells"]
        a.warmup, a.window, a.repeat = meta["warmup"], meta["window"], meta.get("repeat", 1)
        a.duration_min = meta.get("duration_min")
        # What was measured, not what target/ holds now (`cargo bench` rebuilds the binary).
        a.build_kind = meta.get("build_kind")
        # The build and cell of the run rendered, not of this invocation.
        a.quick, a.profile, a.bin = meta.get("quick", a.quick), meta.get("profile", a.profile), meta.get("bin", a.bin)
        set_build(a)
        set_cell(meta.get("cell", a.cell))
        sys.argv = meta["argv"]
        write_report(a, meta["machine"], meta["load_start"], meta["load_end"], meta["started"], res["runs"],
                     res["diags"], res["ceiling"], res["minimal"], res["fast"], res["profile"], res["peers"],
                     meta["notes"], a.out, res.get("floors"))
        print(f"wrote {a.out} from {a.render}")
        return
    stages = set(a.only.split(",")) if a.only else {"alsentry", "diag", "ceiling", "profile", "python", "nodered"}
    if not a.peers:
        stages -= {"python", "nodered"}
    if a.quick:
        stages -= {"diag", "profile", "python", "nodered"}
    if a.no_nodered:
        stages.discard("nodered")
    if a.no_python:
        stages.discard("python")
    need = [BIN, CEILING, FLOOR] + ([FLAT_SIM] if CELL == "flat16" else [])
    for path in need:
        if not os.path.exists(path):
            raise SystemExit(f"{path} missing: cargo build --profile {a.profile} --no-default-features --bin alsentry "
                             "--example modbus_ceiling --example publish_floor --example flat_cells")

    loads = [(100, 1.0), (400, 1.0), (100, 0.1), (400, 0.1)]
    if a.quick:
        loads = [(20, 1.0), (20, 0.1)]
    if a.loads:
        loads = parse_loads(a.loads)
    diag_cells = max(c for c, _ in loads)

    started = dt.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    mach = machine()
    a.tmp = tempfile.mkdtemp(prefix="alsentry-e2e-")
    print(f"work dir {a.tmp}", flush=True)
    a.max_cells = max([c for c, _ in loads] + [a.ceiling_cells] + ([400] if stages & {"python", "nodered"} else []))
    a.base = find_port_range(a.max_cells)
    a.mqtt_port = free_port()
    procs = []
    notes = []
    runs, peers, diags = [], [], []
    floors = {"floor": [], "bare": []}
    ceiling = minimal = fast = prof = None
    t_start = time.monotonic()
    a.build_kind = build_kind()
    try:
        with open(os.path.join(a.tmp, "mosquitto.conf"), "w") as fm:
            fm.write(f"listener {a.mqtt_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
                     "persistence false\nlog_type error\nset_tcp_nodelay true\n")
        mosq = Proc("mosquitto", ["/usr/sbin/mosquitto", "-c", os.path.join(a.tmp, "mosquitto.conf")], a.tmp)
        procs.append(mosq)
        a.sim = start_sim(a)
        procs.append(a.sim)
        if not (wait_port(a.mqtt_port) and wait_port(a.base) and wait_port(a.base + a.max_cells - 1)):
            raise SystemExit(f"mosquitto or the simulator did not start; logs in {a.tmp}")
        a.sub = Subscriber(a.mqtt_port)
        time.sleep(1)
        env = dict(os.environ)

        if "alsentry" in stages:
            three = run_three_ways(a, env, loads)
            runs, floors = three["alsentry"], {"floor": three["floor"], "bare": three["bare"]}
        if "ceiling" in stages:
            cells = a.ceiling_cells
            plan = "flat16" if CELL == "flat16" else "alsentry"
            # The bare loop and alsentry with one and with two worker threads, in alternating
            # short slices (see run_ceiling_slices). The default single worker caps the agent at
            # one core; on a 2-core machine an integrator may set worker_threads = 2 (the
            # simulator needs the other core).
            print(f"run the ceiling stage: {a.ceiling_rounds} rounds of {a.ceiling_slice:g} s slices", flush=True)
            ceiling, one, fast = run_ceiling_slices(a, env, cells, plan, a.ceiling_rounds, a.ceiling_slice,
                                                    0.3 if a.quick else 0.5)
            fast["one_thread"] = one
        if "diag" in stages:
            for name, data, rules in ((f"alsentry-{diag_cells}c-1.0s-nodata", "off", True),
                                      (f"alsentry-{diag_cells}c-1.0s-bare", "off", False)):
                print(f"run {name}", flush=True)
                r = agent_run(a, env, name, diag_cells, 1.0, data_mode=data, latency=rules, rules=rules)
                print(f"  cpu {r['cores']:.3f} rss {r['rss_kib'] / 1024:.1f} MiB lat n={len(r['lat'])} "
                      f"p99={f(pct(r['lat'], 99), '.1f')}", flush=True)
                diags.append(r)
        if "profile" in stages:
            print("profile alsentry (perf)", flush=True)
            prof = profile_run(a, env, diag_cells, 1.0)
        peer_loads = [(100, 1.0), (400, 1.0), (100, 0.1)]
        if "python" in stages:
            for cells, period in peer_loads:
                print(f"run pymodbus peer {cells} cells {period}s", flush=True)
                r = peer_runs(a, env, "py", cells, period)
                print(f"  completed {r['completed']}/{r['scheduled']:.0f} cpu {r['cores']:.3f}", flush=True)
                peers.append(r)
        if "nodered" in stages:
            try:
                print("install Node-RED (npm)", flush=True)
                a.nodered_red, nr_ver, mb_ver = nodered_install(a)
                notes.append(f"Node-RED {nr_ver} with node-red-contrib-modbus {mb_ver} (npm, installed into {a.nodered_dir}).")
                for cells, period in peer_loads:
                    print(f"run Node-RED {cells} cells {period}s", flush=True)
                    r = peer_runs(a, env, "nr", cells, period)
                    print(f"  completed {r['completed']}/{r['scheduled']:.0f} cpu {r['cores']:.3f}", flush=True)
                    peers.append(r)
                    if not r["alive"]:
                        notes.append(f"Node-RED exited during the {cells}-cell run; see its log.")
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                notes.append(f"Node-RED not measured: {e}")
        a.sub.close()
    finally:
        for p in reversed(procs):
            p.stop()
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    a.duration_min = (time.monotonic() - t_start) / 60
    # The raw results first: a report that fails to render can be rendered again from them (--render).
    with open(os.path.join(a.tmp, "results.json"), "w") as fj:
        meta = {"base": a.base, "mqtt_port": a.mqtt_port, "max_cells": a.max_cells, "warmup": a.warmup,
                "window": a.window, "repeat": a.repeat, "quick": a.quick, "profile": a.profile, "bin": a.bin,
                "cell": CELL, "argv": sys.argv, "machine": mach, "load_start": load_start,
                "load_end": load_end, "started": started, "notes": notes, "duration_min": a.duration_min,
                "build_kind": a.build_kind}
        json.dump({"meta": meta, "runs": runs, "diags": diags, "ceiling": ceiling, "minimal": minimal, "fast": fast, "profile": prof,
                   "peers": peers, "floors": floors}, fj, indent=1, default=str)
    write_report(a, mach, load_start, load_end, started, runs, diags, ceiling, minimal, fast, prof, peers, notes, a.out,
                 floors)
    print(f"wrote {a.out} in {a.duration_min:.1f} min; raw results in {a.tmp}/results.json", flush=True)
    if not a.keep:
        shutil.rmtree(a.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
