#!/usr/bin/env python3
"""A province on one machine: N simulated potlines, N alsentry agents (one gateway each), one
plant Mosquitto, measured on the broker side. Optionally a provincial Mosquitto fed by a bridge.

    cargo build --profile soak --bin alsentry
    python3 bench/province.py --quick                  # smoke: 2 agents x 20 cells, 20 s windows, ~1.5 min
    python3 bench/province.py                          # 5x200 and 10x400, raw / summary / bridged
    python3 bench/province.py --sizes 10x400 --variants raw --window 90

Per run ("size" x "variant"):
  * one plant Mosquitto (/usr/sbin/mosquitto or $MOSQUITTO) on a free port, $SYS every second;
  * per agent one `alsentry sim` serving its potline (C cells, one TCP port each, a few anode
    effects without precursor during the window so that alarms flow) and one `alsentry run`
    (its own agent id, area, port range, state dir and /metrics port; 6 potline rules per cell);
  * a counting subscriber on `#` of each broker (message class from the topic suffix) and on
    `$SYS/broker/#` (the broker's own totals: every PUBLISH and every byte in and out);
  * CPU (utime+stime) and RSS from /proc of the broker, the agents, the simulators and this
    harness (the subscriber), and the agents' polls from their /metrics.
Variants: `raw` (data message per cell per poll + summaries + alarms + status),
`summary` (`[data] mode = "off"`: summaries, alarms, status only), `bridged` (raw on the plant
broker plus a second sink `uplink/alsentry` carrying alarms >= high and summaries, and a
Mosquitto bridge forwarding only that namespace to a provincial Mosquitto, as
deploy/compose/mosquitto/plant.conf does).

Every run stops by itself (simulators have --run-for; a watchdog ends the harness); every
process it started is ended at exit, and children get SIGTERM if the harness dies
(PR_SET_PDEATHSIG). Writes a markdown report (bench/province.md by default) and prints it.
"""
import argparse
import ctypes
import datetime as dt
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
CELL_TEMPLATE = os.path.join(ROOT, "config", "templates", "cell.toml")
SITE = "smelter-a"
CLASSES = ("data", "summary", "alarm", "status", "other")
SHARED_FILTER = "$share/historian/alsentry/+/+/+/data"

# The potline rule set of bench/e2e.py, without its latency probe: 6 rules per cell.
RULES = e2e.RULES.split("\n# Latency probe")[0]

# ------------------------------------------------------------------ processes

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: the child gets SIGTERM when the harness dies, even by SIGKILL.
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM, 0, 0, 0)


PROCS = []


class Proc:
    def __init__(self, name, argv, tmp, env=None):
        self.name = name
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.p.pid
        PROCS.append(self)

    def stop(self, timeout=10.0):
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
            except ProcessLookupError:
                pass
        if not self.log.closed:
            self.log.close()

    def alive(self):
        return self.p.poll() is None

    def tail(self, n=15):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def stop_all():
    for p in reversed(PROCS):
        try:
            p.stop(timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    PROCS.clear()


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def machine_busy():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


free_port = e2e.free_port
range_free = e2e.port_range_free


def port_ranges(count, n, start=21000):
    """count disjoint ranges of n free ports below the ephemeral range (32768)."""
    out, base = [], start
    step = max(n, 100)
    while len(out) < count:
        if base + n > 32768:
            raise SystemExit(f"province: no {count} free ranges of {n} ports below 32768")
        if range_free(base, n):
            out.append(base)
        base += step
    return out


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def http_up(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def polls(http_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r'alsentry_polls_total\{.*result="(\w+)".*\}\s+(\d+)', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
    return out


# ------------------------------------------------------------------ broker side


SYS_KEYS = (
    "publish/messages/received", "publish/messages/sent", "publish/messages/dropped",
    "publish/bytes/received", "publish/bytes/sent", "messages/received", "messages/sent",
    "bytes/received", "bytes/sent", "clients/connected",
)


def topic_class(topic):
    if topic.endswith("/data"):
        return "data"
    if topic.endswith("/summary") or topic.endswith("/report/daily"):
        return "summary"
    if "/alarm/" in topic or topic.endswith("/audit"):
        return "alarm"
    if topic.endswith("/status"):
        return "status"
    return "other"


class BrokerWatch:
    """Counts PUBLISHes per class on `#` and records Mosquitto's `$SYS/broker/...` totals.

    Mosquitto publishes its $SYS topics in one burst per `sys_interval`, on the same connection
    as the counted messages. Each burst is a tick: the per-class counts taken when its first
    message arrives and the totals it carries describe the broker at the same moment, so the
    two kinds of figure cover exactly the same window.
    """

    def __init__(self, name, port):
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        self.counts = {}  # (namespace, class) -> [messages, payload bytes, topic bytes]
        self.ticks = []  # {"t": monotonic, "counts": {...}, "sys": {key: value}}
        self.last_sys = 0.0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"province-watch-{name}")
        self.c.on_message = self.on_message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([("#", 0), ("$SYS/broker/#", 0)])
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()

    def on_message(self, client, userdata, msg):
        t = msg.topic
        now = time.monotonic()
        if t.startswith("$SYS/"):
            key = t[len("$SYS/broker/"):]
            with self.lock:
                if now - self.last_sys > 0.3:
                    prev = self.ticks[-1]["sys"] if self.ticks else {}
                    self.ticks.append({"t": now, "counts": {k: list(v) for k, v in self.counts.items()},
                                       "sys": dict(prev)})
                    del self.ticks[:-400]
                self.last_sys = now
                if key in SYS_KEYS:
                    try:
                        self.ticks[-1]["sys"][key] = float(msg.payload)
                    except ValueError:
                        pass
            return
        ns = "uplink" if t.startswith("uplink/") else "alsentry"
        k = (ns, topic_class(t))
        with self.lock:
            c = self.counts.setdefault(k, [0, 0, 0])
            c[0] += 1
            c[1] += len(msg.payload)
            c[2] += len(t)

    def latest_tick(self):
        with self.lock:
            return dict(self.ticks[-1]) if self.ticks else None

    def tick_near(self, t):
        """The recorded tick closest in time to t."""
        with self.lock:
            return dict(min(self.ticks, key=lambda k: abs(k["t"] - t))) if self.ticks else None

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


class SharedConsumer:
    """One member of a shared subscription group: counts what the broker hands to it."""

    def __init__(self, name, port, topic_filter):
        import paho.mqtt.client as mqtt

        self.n = 0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.c.on_message = self.on_message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, 0)
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()

    def on_message(self, client, userdata, msg):
        self.n += 1  # one paho thread per client: no lock needed

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def mosquitto_conf(path, port, bridge_to=None):
    with open(path, "w") as f:
        f.write(f"""# generated by bench/province.py
per_listener_settings false
allow_anonymous true
listener {port} 127.0.0.1
set_tcp_nodelay true
persistence false
sys_interval 1
max_queued_messages 100000
log_dest stderr
log_type error
log_type warning
""")
        if bridge_to:
            # The bridge of deploy/compose/mosquitto/plant.conf, without credentials.
            f.write(f"""
connection plant-{SITE}
address 127.0.0.1:{bridge_to}
bridge_protocol_version mqttv311
try_private true
cleansession false
remote_clientid bridge-plant-{SITE}
restart_timeout 1 5
keepalive_interval 30
notifications true
notification_topic alsentry/{SITE}/_bridge/plant-broker/state
topic +/+/+/alarm/+ out 1 uplink/alsentry/ alsentry/
topic +/+/+/summary out 1 uplink/alsentry/ alsentry/
topic +/+/_agent/+/status out 1 uplink/alsentry/ alsentry/
""")


# ------------------------------------------------------------------ sims and agents


def scenario(path, i, base, cells, aes, ae_start_s, ae_span_s):
    lines = [e2e.potline_scenario_text(f"bench/province.py: potline {i}", f"potline_{i:02}", 400 + i, base, cells)]
    # A few anode effects without precursor, spread over the window, so the alarm class is not empty.
    for k in range(aes):
        cell = 1 + (k * 97 + i * 13) % cells
        at = ae_start_s + (k + 0.5) * ae_span_s / max(aes, 1)
        lines.append(f"""
[[faults]]
kind = "anode_effect"
devices = ["pot-{cell:03}"]
at = "{int(at)}s"
duration = "20s"
params = {{ precursor = "0s" }}
""")
    with open(path, "w") as f:
        f.write("".join(lines))


def agent_config(path, tmp, run, i, plant_port, http_port, base, cells, poll, data_mode, summary, uplink):
    sinks = f"""[[mqtt]]
name = "plant"
url = "mqtt://127.0.0.1:{plant_port}"
topic_root = "alsentry"
"""
    if uplink:
        sinks += f"""
[[mqtt]]
name = "uplink"
url = "mqtt://127.0.0.1:{plant_port}"
topic_root = "uplink/alsentry"
carry = ["alarm", "summary"]
min_priority = "high"
"""
    with open(path, "w") as f:
        f.write(f"""# generated by bench/province.py ({run}, agent {i})
include = ["{CELL_TEMPLATE}"]

[agent]
id = "gw-{i:02}"
site = "{SITE}"
area = "potline-{i:02}"
state_dir = "{tmp}/state-{run}-{i:02}"

{sinks}
[http]
listen = "127.0.0.1:{http_port}"

[data]
mode = "{data_mode}"

[summary]
interval = "{summary}"

[[devices]]
name = "pot-{{index:03}}"
template = "cell"
endpoint = "tcp://127.0.0.1:{{port}}"
ports = "{base}-{base + cells - 1}"
unit = 1
poll = "{poll}"
timeout = "500ms"
{RULES}""")


# ------------------------------------------------------------------ one run


def dur_s(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not m:
        raise SystemExit(f"province: duration {text!r}: use e.g. 500ms, 1s, 10s, 1m")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2)]


def one_run(a, agents, cells, poll, variant):
    run = f"{agents}x{cells}-{dur_s(poll) * 1000:.0f}ms-{variant}"
    tmp = os.path.join(a.tmp, run)
    os.makedirs(tmp)
    started = []
    watches = []
    try:
        bridged = variant == "bridged"
        prov_port = free_port() if bridged else None
        if bridged:
            mosquitto_conf(os.path.join(tmp, "provincial.conf"), prov_port)
            started.append(Proc(f"{run}-provincial", [a.mosquitto, "-c", os.path.join(tmp, "provincial.conf")], tmp))
            if not wait_for(lambda: http_up(prov_port), 10):
                raise RuntimeError("provincial Mosquitto did not start")
        plant_port = free_port()
        mosquitto_conf(os.path.join(tmp, "plant.conf"), plant_port, bridge_to=prov_port)
        plant = Proc(f"{run}-plant", [a.mosquitto, "-c", os.path.join(tmp, "plant.conf")], tmp)
        started.append(plant)
        if not wait_for(lambda: http_up(plant_port), 10):
            raise RuntimeError(f"plant Mosquitto did not start: {plant.tail()}")
        prov = started[0] if bridged else None
        watch = BrokerWatch(f"plant-{run}", plant_port)
        watches.append(watch)
        pwatch = BrokerWatch(f"prov-{run}", prov_port) if bridged else None
        if pwatch:
            watches.append(pwatch)
        # Consumers sharing the data stream the MQTT 5 way ($share/{group}/{filter}, MQTT 5.0 4.8.2).
        shared = [SharedConsumer(f"province-historian-{k}", plant_port, SHARED_FILTER) for k in range(a.shared)]
        watches.extend(shared)

        bases = port_ranges(agents, cells)
        # Budget: start-up (up to 60 s) + warm-up + window + margin; the sims then stop by themselves.
        run_for = int(60 + a.warmup + a.window + 30)
        sims = []
        for i, base in enumerate(bases, 1):
            sc = os.path.join(tmp, f"scenario-{i:02}.toml")
            scenario(sc, i, base, cells, a.aes, a.ae_start, a.window)
            sims.append(Proc(f"{run}-sim-{i:02}", [a.bin, "sim", "--scenario", sc, "--run-for", f"{run_for}s"], tmp))
        for s in sims:
            if not wait_for(lambda s=s: "ground truth" in open(s.log_path).read() or not s.alive(), 60):
                raise RuntimeError(f"{s.name} did not start")
            if not s.alive():
                raise RuntimeError(f"{s.name} exited: {s.tail()}")

        data_mode = "off" if variant == "summary" else "poll"
        agent_procs = []
        for i, base in enumerate(bases, 1):
            http_port = free_port()
            cfg = os.path.join(tmp, f"agent-{i:02}.toml")
            agent_config(cfg, tmp, run, i, plant_port, http_port, base, cells, poll, data_mode, a.summary,
                         uplink=bridged)
            chk = subprocess.run([a.bin, "check", "--config", cfg], capture_output=True, text=True)
            if chk.returncode != 0:
                raise RuntimeError(f"{cfg} does not pass `alsentry check`:\n{chk.stdout}{chk.stderr}")
            p = Proc(f"{run}-agent-{i:02}", [a.bin, "run", "--config", cfg], tmp,
                     env=dict(os.environ, RUST_LOG="warn"))
            p.http_port = http_port
            agent_procs.append(p)
        for p in agent_procs:
            if not wait_for(lambda p=p: http_up(p.http_port) or not p.alive(), 30):
                raise RuntimeError(f"{p.name}: /metrics did not come up")
            if not p.alive():
                raise RuntimeError(f"{p.name} exited: {p.tail()}")
        time.sleep(a.warmup)

        def snap():
            return {
                "t": time.monotonic(),
                "plant_cpu": cpu_seconds(plant.pid),
                "prov_cpu": cpu_seconds(prov.pid) if prov else 0.0,
                "agents_cpu": [cpu_seconds(p.pid) for p in agent_procs],
                "sims_cpu": sum(cpu_seconds(s.pid) for s in sims),
                "self_cpu": sum(os.times()[:2]),
                "polls": [polls(p.http_port) for p in agent_procs],
                "shared": [c.n for c in shared],
                "machine": machine_busy(),
            }

        s0 = snap()
        tick0 = {"plant": watch.latest_tick(), "prov": pwatch.latest_tick() if pwatch else None}
        load0 = os.getloadavg()
        rss = {"plant": [], "prov": [], "agents": [], "agent_max": [], "sims": []}
        end = s0["t"] + a.window
        while time.monotonic() < end:
            rss["plant"].append(rss_kib(plant.pid))
            if prov:
                rss["prov"].append(rss_kib(prov.pid))
            ar = [rss_kib(p.pid) for p in agent_procs]
            rss["agents"].append(sum(ar))
            rss["agent_max"].append(max(ar))
            rss["sims"].append(sum(rss_kib(s.pid) for s in sims))
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        s1 = snap()
        load1 = os.getloadavg()
        # The broker's tick closest to one window after the first (the next one may be in flight).
        time.sleep(1.5)
        tick1 = {k: (w.tick_near(tick0[k]["t"] + a.window) if tick0[k] else None)
                 for k, w in (("plant", watch), ("prov", pwatch)) if w}
        tick1.setdefault("prov", None)
        dead = [p.name for p in agent_procs + sims + started if not p.alive()]
        broker_threads = threads(plant.pid)
        r = summarise(run, agents, cells, variant, poll, data_mode, s0, s1, tick0, tick1, rss, load0, load1, dead)
        r["broker_threads"] = broker_threads
        return r
    finally:
        for w in watches:
            w.close()
        for p in reversed(PROCS[:]):
            if p.name.startswith(run + "-"):
                p.stop()
                PROCS.remove(p)


def summarise(run, agents, cells, variant, poll, data_mode, s0, s1, tick0, tick1, rss, load0, load1, dead):
    secs = s1["t"] - s0["t"]
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731

    def classes(key):
        t0, t1 = tick0[key], tick1[key]
        if not t0 or not t1 or t1["t"] <= t0["t"]:
            return None
        dt_s = t1["t"] - t0["t"]
        out = {}
        for k, v in t1["counts"].items():
            b = t0["counts"].get(k, [0, 0, 0])
            out[k] = {"msgs": (v[0] - b[0]) / dt_s, "payload": (v[1] - b[1]) / dt_s,
                      "topic": (v[2] - b[2]) / dt_s, "n": v[0] - b[0]}
        return out

    def broker(key, cpu_key):
        t0, t1 = tick0[key], tick1[key]
        if not t0 or not t1 or t1["t"] <= t0["t"]:
            return None
        dt_s = t1["t"] - t0["t"]
        rates = {k: ((t1["sys"][k] - t0["sys"][k]) / dt_s if k in t0["sys"] and k in t1["sys"] else None)
                 for k in SYS_KEYS}
        return rates | {"cpu": (s1[cpu_key] - s0[cpu_key]) / secs, "cpu_s": s1[cpu_key] - s0[cpu_key],
                        "sys_window_s": dt_s, "connected": t1["sys"].get("clients/connected")}

    ok = sum(p1.get("ok", 0) - p0.get("ok", 0) for p0, p1 in zip(s0["polls"], s1["polls"]))
    failed = sum(p1.get("failed", 0) - p0.get("failed", 0) for p0, p1 in zip(s0["polls"], s1["polls"]))
    missed = sum(p1.get("missed", 0) - p0.get("missed", 0) for p0, p1 in zip(s0["polls"], s1["polls"]))
    agent_cpu = [(b - a) / secs for a, b in zip(s0["agents_cpu"], s1["agents_cpu"])]
    mb = (s1["machine"][0] - s0["machine"][0]) / max(1, s1["machine"][1] - s0["machine"][1])
    return {
        "run": run, "agents": agents, "cells": cells, "variant": variant, "poll": poll, "data": data_mode,
        "seconds": secs, "plant": broker("plant", "plant_cpu"), "prov": broker("prov", "prov_cpu"),
        "plant_classes": classes("plant"), "prov_classes": classes("prov"),
        "plant_rss": med(rss["plant"]), "prov_rss": med(rss["prov"]),
        "agents_cpu": sum(agent_cpu), "agent_cpu_max": max(agent_cpu),
        "agents_rss": med(rss["agents"]), "agent_rss_max": max(rss["agent_max"]) if rss["agent_max"] else None,
        "sims_cpu": (s1["sims_cpu"] - s0["sims_cpu"]) / secs, "sims_rss": med(rss["sims"]),
        "self_cpu": (s1["self_cpu"] - s0["self_cpu"]) / secs,
        "shared": [(b - a) / secs for a, b in zip(s0["shared"], s1["shared"])],
        "polls_ok": ok, "polls_failed": failed, "polls_missed": missed,
        "polls_scheduled": agents * cells * secs / dur_s(poll),
        "machine_busy": mb * os.cpu_count(), "load": (load0, load1), "dead": dead,
    }


# ------------------------------------------------------------------ report


def f0(x):
    return "n/a" if x is None else f"{x:,.0f}"


def f1(x):
    return "n/a" if x is None else f"{x:,.1f}"


def f2(x):
    return "n/a" if x is None else f"{x:.2f}"


def mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def report(a, results, started_at, cmd):
    out = []
    w = out.append
    ver = subprocess.run([a.bin, "--version"], capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip() or "unknown"
    mver = subprocess.run([a.mosquitto, "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    w("<!-- generated by bench/province.py; do not edit by hand -->")
    w("## Province on one machine: measured")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| Date | {started_at:%Y-%m-%d %H:%M} UTC |")
    w(f"| Machine | {os.cpu_count()} vCPU {cpu}, {mem:,} MiB RAM, Linux {platform.release()}; "
      "shared with other builds (the load column says how much): CPU figures are noisy upper bounds, "
      "message and byte rates are set by the load generated and hardly move |")
    w(f"| Binary | `{os.path.relpath(a.bin, ROOT)}` ({ver}, tree {head}), `cargo build --profile soak --bin alsentry` |")
    w(f"| Broker | {mver[0] if mver else a.mosquitto} (`{a.mosquitto}`), `persistence false`, `sys_interval 1`, "
      "`set_tcp_nodelay true`, one counting subscriber on `#`"
      + (f", {a.shared} consumers sharing `{SHARED_FILTER}`" if a.shared else "") + " |")
    w(f"| Per agent | one `alsentry sim` potline of C cells (one TCP port each, 22-tag cell template, "
      f"{a.aes} anode effects without precursor in the window), `alsentry run` polling each cell at the size's period (`@`, default {a.poll}), "
      f"6 rules per cell, summaries every {a.summary}, one plant sink (+ the uplink sink when bridged) |")
    w(f"| Windows | {a.warmup:.0f} s warm-up after every agent's /metrics is up, then {a.window:.0f} s measured |")
    w(f"| Command | `{cmd}` |")
    w("")
    w("Broker rates are from Mosquitto's own `$SYS/broker/publish/...` and `$SYS/broker/bytes/...` "
      "counters (every PUBLISH and every byte on the wire, the counting subscriber's copy and the bridge included); "
      "the per-class split from the counting subscriber (payload bytes, topic excluded). CPU is utime+stime "
      "from /proc over the window, in cores (1.00 = one core busy).")
    w("")
    w("### Plant broker")
    w("")
    w("| Run | agents × cells | data | PUBLISH in /s | bytes in /s | PUBLISH out /s | bytes out /s | "
      "dropped /s | broker CPU (cores), threads | broker RSS MiB | PUBLISH in+out per CPU-second | "
      "machine busy (cores of 2), load 1 min |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r["plant"]
        both = (p["publish/messages/received"] or 0) + (p["publish/messages/sent"] or 0)
        w(f"| {r['variant']} | {r['agents']} × {r['cells']} @ {r['poll']} | {r['data']} | {f0(p['publish/messages/received'])} | "
          f"{f0(p['bytes/received'])} | {f0(p['publish/messages/sent'])} | {f0(p['bytes/sent'])} | "
          f"{f1(p['publish/messages/dropped'])} | {f2(p['cpu'])}, {r['broker_threads']} | {mib(r['plant_rss'])} | {f0(both / p['cpu']) if p['cpu_s'] >= 0.5 else 'n/a'} | "
          f"{f2(r['machine_busy'])}, {r['load'][0][0]:.1f}-{r['load'][1][0]:.1f} |")
    w("")
    w("### What the agents publish, by class (plant broker, counting subscriber)")
    w("")
    w("| Run | agents × cells | class | topic namespace | messages/s | payload bytes/s | mean payload bytes |")
    w("|---|---|---|---|---|---|---|")
    for r in results:
        for (ns, cl), v in sorted(r["plant_classes"].items(), key=lambda kv: (kv[0][0], CLASSES.index(kv[0][1]))):
            mean = v["payload"] / v["msgs"] if v["msgs"] else None
            w(f"| {r['variant']} | {r['agents']} × {r['cells']} @ {r['poll']} | {cl} | `{ns}/` | {f1(v['msgs'])} | "
              f"{f0(v['payload'])} | {f0(mean)} |")
    bridged = [r for r in results if r["prov"]]
    if bridged:
        w("")
        w("### What reaches the province (bridged runs)")
        w("")
        w("| Run | agents × cells | alarm msg/s | summary msg/s | status msg/s | payload bytes/s, all | "
          "provincial broker: PUBLISH in /s | bytes in /s | CPU (cores) | RSS MiB |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for r in bridged:
            p, c = r["prov"], r["prov_classes"] or {}
            get = lambda cl: c.get(("alsentry", cl), {"msgs": 0.0})["msgs"]  # noqa: E731
            w(f"| {r['variant']} | {r['agents']} × {r['cells']} @ {r['poll']} | {f1(get('alarm'))} | {f1(get('summary'))} | "
              f"{f1(get('status'))} | {f0(sum(v['payload'] for v in c.values()))} | "
              f"{f1(p['publish/messages/received'])} | {f0(p['bytes/received'])} | {f2(p['cpu'])} | "
              f"{mib(r['prov_rss'])} |")
    w("")
    w("### The agents and the simulators")
    w("")
    w("| Run | agents × cells | polls done / scheduled | failed | agents' CPU, all (cores) | busiest agent | "
      "agents' RSS, all (MiB) | largest agent RSS (MiB) | simulators' CPU (cores) | simulators' RSS (MiB) | "
      "subscriber + harness CPU |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        frac = r["polls_ok"] / r["polls_scheduled"] * 100 if r["polls_scheduled"] else 0
        w(f"| {r['variant']} | {r['agents']} × {r['cells']} @ {r['poll']} | {r['polls_ok']:,} / {r['polls_scheduled']:,.0f} "
          f"({frac:.1f} %) | {r['polls_failed']} | {f2(r['agents_cpu'])} | {f2(r['agent_cpu_max'])} | "
          f"{mib(r['agents_rss'])} | {mib(r['agent_rss_max'])} | {f2(r['sims_cpu'])} | {mib(r['sims_rss'])} | "
          f"{f2(r['self_cpu'])} |")
    if a.shared:
        w("")
        w(f"### Shared subscription: {a.shared} consumers on `{SHARED_FILTER}` (plant broker)")
        w("")
        w("| Run | agents × cells | data messages/s published | received by each consumer, messages/s |")
        w("|---|---|---|---|")
        for r in results:
            d = (r["plant_classes"] or {}).get(("alsentry", "data"), {"msgs": 0.0})["msgs"]
            w(f"| {r['variant']} | {r['agents']} × {r['cells']} @ {r['poll']} | {f1(d)} | "
              f"{', '.join(f1(x) for x in r['shared'])} |")
    slow = [r["run"] for r in results if (r["plant"]["publish/messages/dropped"] or 0) > 0]
    if slow:
        w("")
        w("**Mosquitto dropped messages** in " + ", ".join(slow) + ": a consumer (most likely this harness's "
          "Python subscriber, which shares one interpreter with the other counting clients) did not read fast "
          "enough. Per-class rates of those runs are undercounts and their $SYS window is stretched; only the "
          "agents' and simulators' figures stand.")
    dead = [(r["run"], r["dead"]) for r in results if r["dead"]]
    if dead:
        w("")
        w("Processes that had exited before the end of their window: " +
          "; ".join(f"{run}: {', '.join(d)}" for run, d in dead))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5x200,10x400",
                    help="AGENTSxCELLS[@POLL],... (default 5x200,10x400; POLL defaults to --poll)")
    ap.add_argument("--variants", default="raw,summary,bridged", help="raw,summary,bridged")
    ap.add_argument("--poll", default="1s")
    ap.add_argument("--summary", default="10s", help="[summary] interval of the agents (default 10s)")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--aes", type=int, default=2, help="anode effects per potline in the window (default 2)")
    ap.add_argument("--shared", type=int, default=0,
                    help=f"consumers sharing the data stream with {SHARED_FILTER} (default 0)")
    ap.add_argument("--quick", action="store_true", help="2 agents x 20 cells, 5 s warm-up, 20 s window")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "soak", "alsentry"))
    ap.add_argument("--mosquitto", default=os.environ.get("MOSQUITTO") or shutil.which("mosquitto")
                    or "/usr/sbin/mosquitto")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "province.md"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.warmup, a.window = "2x20", 5.0, 20.0
    sizes = []
    for s in a.sizes.split(","):
        m = re.fullmatch(r"(\d+)x(\d+)(?:@(\S+))?", s.strip())
        if not m:
            raise SystemExit(f"province: size {s!r}: use AGENTSxCELLS[@POLL], e.g. 10x400 or 10x400@500ms")
        poll = m.group(3) or a.poll
        dur_s(poll)
        sizes.append((int(m.group(1)), int(m.group(2)), poll))
    variants = [v.strip() for v in a.variants.split(",")]
    for v in variants:
        if v not in ("raw", "summary", "bridged"):
            raise SystemExit(f"province: variant {v!r}: raw, summary or bridged")
    for exe in (a.bin, a.mosquitto):
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"province: {exe} not found or not executable (cargo build --profile soak --bin alsentry)")
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        raise SystemExit("province: needs python3-paho-mqtt (>= 2.0)")
    dur_s(a.poll)
    if abs(a.window / dur_s(a.summary) - round(a.window / dur_s(a.summary))) > 1e-9:
        print("province: the window is not a multiple of the summary interval: summary rates will be off by "
              "up to one interval's burst", file=sys.stderr)
    # The anode effects start this long after a sim starts: agents up + warm-up.
    a.ae_start = a.warmup + 10.0
    a.tmp = tempfile.mkdtemp(prefix="province-")

    # Every run is bounded: a watchdog ends the harness (and, through stop_all, every child).
    budget = len(sizes) * len(variants) * (a.warmup + a.window + 150) + 60
    def watchdog():
        print(f"province: over the time budget of {budget:.0f} s; stopping", file=sys.stderr)
        stop_all()
        os._exit(3)
    timer = threading.Timer(budget, watchdog)
    timer.daemon = True
    timer.start()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: (stop_all(), os._exit(130)))

    started_at = dt.datetime.now(dt.timezone.utc)
    cmd = " ".join(["python3 bench/province.py"] + sys.argv[1:])
    results = []
    try:
        for agents, cells, poll in sizes:
            for v in variants:
                print(f"province: {agents} agents x {cells} cells every {poll}, {v} ...", file=sys.stderr, flush=True)
                r = one_run(a, agents, cells, poll, v)
                p = r["plant"]
                print(f"province:   plant broker {f0(p['publish/messages/received'])} PUBLISH/s in, "
                      f"{f0(p['bytes/received'])} B/s in, CPU {f2(p['cpu'])}; agents {f2(r['agents_cpu'])} cores, "
                      f"sims {f2(r['sims_cpu'])}; polls {r['polls_ok']}/{r['polls_scheduled']:.0f}",
                      file=sys.stderr, flush=True)
                results.append(r)
    finally:
        stop_all()
        timer.cancel()
        if a.keep:
            print(f"province: kept {a.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(a.tmp, ignore_errors=True)
    md = report(a, results, started_at, cmd)
    with open(a.out, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
