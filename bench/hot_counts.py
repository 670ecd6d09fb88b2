#!/usr/bin/env python3
"""Per-poll costs of the agent's hot path, in counts that do not depend on how busy the machine
is: syscalls (by kind) and context switches per completed poll, from `perf stat` tracepoints on
the agent for a fixed window; plus CPU from /proc as a noisy extra.

Same setup as bench/e2e.py's alsentry stage (its cell, simulator, rules, `[data] mode =
"poll"`, summaries every 10 s, a private Mosquitto); no subscriber. `--cell flat16` (the default,
issue 22's 16-float32 cell, examples/flat_cells.rs) or `--cell cell` (`alsentry sim`).
`--floor` also counts the publishing floor (examples/publish_floor.rs) at each load, so the two
can be compared poll for poll (`--floor-nodelay`: with TCP_NODELAY, as alsentry's MQTT 5
connections; its 3.1.1 ones keep Nagle for QoS 0 data, like the floor); `--record SECONDS` adds a `perf record -e cpu-clock -g` of each (`--dwarf`: with DWARF call
graphs, so inclusive shares are right; `--freq HZ` for more samples at light loads).

    cargo build --profile soak --bin alsentry --example publish_floor --example flat_cells --example modbus_ceiling
    python3 bench/hot_counts.py --profile soak --loads 400x1.0,400x0.1 --floor

`--callgrind` counts user-space instructions per poll instead, under valgrind (repeatable for
one binary whatever the machine is doing, so two builds compare without interleaving):

    python3 bench/hot_counts.py --profile release --loads 400x0.001 --data off --callgrind --ceiling

Needs perf with tracepoints readable (`perf stat -e syscalls:sys_enter_writev true` works) and
mosquitto at /usr/sbin/mosquitto.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402

EVENTS = [
    "task-clock", "context-switches", "raw_syscalls:sys_enter",
    "syscalls:sys_enter_writev", "syscalls:sys_enter_write", "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_read", "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_futex",
]


def add_malloc_probes(binary):
    """Uprobes on the C library's malloc and realloc the agent links (`perf probe`, root): heap
    allocations per poll, a count that does not depend on how busy the machine is."""
    libc = None
    for line in subprocess.run(["ldd", binary], capture_output=True, text=True).stdout.splitlines():
        if "libc.so" in line and "=>" in line:
            libc = line.split("=>")[1].split("(")[0].strip()
    if not libc:
        raise SystemExit(f"--mallocs: no C library found in `ldd {binary}` (a static build?)")
    for fn in ("malloc", "realloc"):
        r = subprocess.run(["perf", "probe", "-x", libc, "--add", fn], capture_output=True, text=True)
        if r.returncode != 0 and "already exists" not in r.stderr:
            raise SystemExit(f"--mallocs: perf probe -x {libc} --add {fn}: {r.stderr.strip()}")
        EVENTS.append(f"probe_libc:{fn}")


def perf_window(pid, seconds):
    out = subprocess.run(["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(pid), "--",
                          "sleep", str(seconds)], capture_output=True, text=True).stderr
    counts = {}
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) > 3 and parts[2] in EVENTS:
            try:
                counts[parts[2]] = float(parts[0])
            except ValueError:
                counts[parts[2]] = None
    return counts


def user_sys(pid):
    """(user, system) CPU seconds of `pid`: user time moves less with the peers' wake-ups."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / e2e.TICK, int(fields[12]) / e2e.TICK


def cpu_text(c0, c1, ok):
    return (f"cpu user {(c1[0] - c0[0]) / ok * 1e6:.1f} + sys {(c1[1] - c0[1]) / ok * 1e6:.1f} us per poll "
            f"(10 ms ticks, noisy)")


def perf_record(a, name, pid):
    data = os.path.join(a.tmp, f"{name}.perf.data")
    # The release build keeps no frame pointers, so `-g` stacks stop at the first frame; DWARF
    # unwinding gives whole call chains (inclusive shares) at the cost of larger files.
    graph = ["--call-graph", "dwarf,16384"] if a.dwarf else ["-g"]
    subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", str(a.freq)] + graph + ["-p", str(pid), "-o", data,
                    "--", "sleep", str(a.record)], capture_output=True)
    print(f"  perf data: {data}")


def show(name, ok, counts, extra):
    print(f"{name}: {ok} polls ok{extra}")
    for ev in EVENTS:
        v = counts.get(ev)
        if v is None or not ok:
            print(f"  {ev:32} n/a")
        elif ev == "task-clock":
            print(f"  {ev:32} {v / ok * 1e3:10.1f} us per poll (noisy)")
        else:
            print(f"  {ev:32} {v / ok:10.2f} per poll")


def run_floor(a, cells, period_s):
    name = f"floor-{cells}c-{period_s}s"
    tpath, tname = e2e.template_file(a)
    p = e2e.Proc(name, [e2e.FLOOR, "--template", tpath, "--template-name", tname, "--first-port", str(a.base),
                        "--cells", str(cells), "--interval", f"{int(round(period_s * 1000))}ms",
                        "--mqtt", f"127.0.0.1:{a.mqtt_port}", "--progress"]
                 + (["--tcp-nodelay"] if a.floor_nodelay else []), a.tmp)
    log = os.path.join(a.tmp, f"{name}.log")
    try:
        time.sleep(a.warmup)
        p0, c0, t0 = e2e.floor_polls(p, log), user_sys(p.pid), time.monotonic()
        counts = perf_window(p.pid, a.window)
        p1, c1, t1 = e2e.floor_polls(p, log), user_sys(p.pid), time.monotonic()
        if a.record:
            perf_record(a, name, p.pid)
    finally:
        p.stop()
    ok = p1["ok"] - p0["ok"]
    show(name, ok, counts, f", failed {p1['failed'] - p0['failed']}; cpu {(sum(c1) - sum(c0)) / (t1 - t0):.3f} cores; "
         + cpu_text(c0, c1, ok))


def run_ceiling(a, cells):
    """The transport ceiling (examples/modbus_ceiling.rs, the cell's reads, back to back) over the
    same window: its syscalls per poll beside the agent polling flat out."""
    name = f"ceiling-{cells}c" + ("-own" if a.ceiling_client == "alsentry" else "")
    plan = "flat16" if a.cell == "flat16" else "alsentry"
    if a.callgrind:
        return callgrind_ceiling(a, name, cells, plan)
    p = e2e.Proc(name, [e2e.CEILING, "--first-port", str(a.base), "--cells", str(cells), "--plan", plan,
                        "--warmup", str(a.warmup), "--seconds", str(a.window), "--client", a.ceiling_client], a.tmp)
    try:
        time.sleep(a.warmup)
        c0, t0 = user_sys(p.pid), time.monotonic()
        counts = perf_window(p.pid, a.window)
        c1, t1 = user_sys(p.pid), time.monotonic()
        p.p.wait(timeout=a.window + 30)
    finally:
        p.stop()
    with open(os.path.join(a.tmp, f"{name}.log")) as f:
        line = f.read().strip().splitlines()[-1]
    # The ceiling counts over its own window, the same length as perf's, started at the same time.
    ok = int(round(json.loads(line)["polls_per_s"] * (t1 - t0)))
    show(name, ok, counts, f" (from its polls/s over the window); cpu {(sum(c1) - sum(c0)) / (t1 - t0):.3f} cores; "
         + cpu_text(c0, c1, ok))


def callgrind_window(a, name, p, http_port, out):
    """Instructions per poll under callgrind: counted from the window's start (instrumentation
    switched on) to its end (the first dump, `<out>.1`; all threads in one count), the window's
    two scrapes of /metrics included. Repeatable for one binary whatever else the machine does,
    so two builds compare without interleaving."""
    subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], capture_output=True, check=True)
    p0 = e2e.polls(http_port)
    time.sleep(a.window)
    p1 = e2e.polls(http_port)
    subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, check=True)
    ir = callgrind_total(out + ".1")
    ok = p1["ok"] - p0["ok"]
    turns = p1.get("engine_turns", 0) - p0.get("engine_turns", 0)
    print(f"{name} (callgrind): {ok} polls ok, failed {p1['failed'] - p0['failed']}, "
          f"dropped {p1['dropped'] - p0['dropped']}, engine turns {turns / ok if ok else 0:.3f} per poll; "
          f"{ir / ok if ok else 0:,.0f} instructions per poll")


def callgrind_total(path):
    """The instruction count of one callgrind output file."""
    with open(path) as fi:
        for line in fi:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"no instruction count in {path}")


def callgrind_ceiling(a, name, cells, plan):
    """The bare loop's instructions per poll: its whole run under callgrind (no warm-up; start-up
    and opening the connections included, a rounding error beside the polls) over the polls it
    counted."""
    out = os.path.join(a.tmp, f"{name}.callgrind")
    p = e2e.Proc(name, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", e2e.CEILING,
                        "--first-port", str(a.base), "--cells", str(cells), "--plan", plan,
                        "--warmup", "0", "--seconds", str(a.window), "--client", a.ceiling_client], a.tmp)
    try:
        p.p.wait(timeout=a.window + 120)
    finally:
        p.stop()
    with open(os.path.join(a.tmp, f"{name}.log")) as f:
        polls = json.loads([x for x in f.read().splitlines() if x.startswith("{")][-1])["polls"]
    ir = callgrind_total(out)
    print(f"{name} (callgrind): {polls} polls ok; {ir / polls if polls else 0:,.0f} instructions per poll")


def run(a, cells, period_s):
    name = f"hot-{cells}c-{period_s}s"
    http_port = e2e.free_port()
    cfg = os.path.join(a.tmp, f"{name}.toml")
    e2e.agent_config(cfg, a.tmp, name, a.mqtt_port, http_port, a.base, cells,
                     f"{int(round(period_s * 1000))}ms", a.data, True, a.threads)
    cmd = [a.bin, "run", "--config", cfg]
    if a.callgrind:
        out = os.path.join(a.tmp, f"{name}.callgrind")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"] + cmd
    p = e2e.Proc(name, cmd, a.tmp, env=dict(os.environ, RUST_LOG="warn"))
    try:
        if not e2e.wait_port(http_port, 120 if a.callgrind else 20):
            raise SystemExit(f"{name}: no HTTP endpoint; see {a.tmp}/{name}.log")
        time.sleep(a.warmup)
        if a.callgrind:
            return callgrind_window(a, name, p, http_port, out)
        p0, c0, t0 = e2e.polls(http_port), user_sys(p.pid), time.monotonic()
        counts = perf_window(p.pid, a.window)
        p1, c1, t1 = e2e.polls(http_port), user_sys(p.pid), time.monotonic()
        rss = e2e.mem_kib(p.pid)
        if a.record:
            perf_record(a, name, p.pid)
    finally:
        p.stop()
    ok = p1["ok"] - p0["ok"]
    turns = p1.get("engine_turns", 0) - p0.get("engine_turns", 0)
    show(name, ok, counts, f", failed {p1['failed'] - p0['failed']}, dropped {p1['dropped'] - p0['dropped']}, "
         f"engine turns {turns / ok if ok else 0:.2f} per poll; "
         f"cpu {(sum(c1) - sum(c0)) / (t1 - t0):.3f} cores; {cpu_text(c0, c1, ok)}; rss {rss[0] / 1024:.1f} MiB, peak {rss[1] / 1024:.1f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="soak", help="target/<profile>/ holds alsentry and the examples")
    ap.add_argument("--bin", help="the alsentry binary (default: target/<profile>/alsentry)")
    ap.add_argument("--cell", choices=("flat16", "cell"), default="flat16")
    ap.add_argument("--floor", action="store_true", help="also count the publishing floor at each load")
    ap.add_argument("--floor-nodelay", action="store_true",
                    help="the floor with TCP_NODELAY on its broker connection")
    ap.add_argument("--ceiling", action="store_true",
                    help="also count the transport ceiling (bare loop, back to back) after each load")
    ap.add_argument("--ceiling-client", choices=("tokio-modbus", "alsentry"), default="tokio-modbus",
                    help="the bare loop's Modbus client: tokio-modbus, or alsentry's own TCP client")
    ap.add_argument("--record", type=float, default=0, help="seconds of perf record after each window")
    ap.add_argument("--dwarf", action="store_true",
                    help="record DWARF call graphs (whole call chains; `perf report --children` is then meaningful)")
    ap.add_argument("--freq", type=int, default=999, help="perf record sampling frequency (Hz)")
    ap.add_argument("--loads", default="400x1.0,400x0.1",
                    help="CELLSxPERIOD_S, comma separated; 400x0.001 polls back to back, like e2e.py's ceiling")
    ap.add_argument("--data", default="poll", choices=("poll", "change", "off"),
                    help="the agent's [data] mode (e2e.py's ceiling stage runs with off)")
    ap.add_argument("--threads", type=int, default=1, help="the agent's worker_threads")
    ap.add_argument("--mallocs", action="store_true",
                    help="also count malloc and realloc calls per poll (uprobes on the C library; root)")
    ap.add_argument("--callgrind", action="store_true",
                    help="run the agent (and with --ceiling the bare loop) under valgrind's callgrind and count "
                         "user-space instructions per poll over the window (no perf; they run ~50x slower, so "
                         "polls back to back come far fewer)")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=20.0)
    a = ap.parse_args()
    e2e.set_build(a)
    e2e.set_cell(a.cell)
    a.bin = e2e.BIN
    if a.mallocs:
        add_malloc_probes(a.bin)
    a.tmp = tempfile.mkdtemp(prefix="alsentry-hot-")
    a.base = e2e.find_port_range(400, 31100)
    a.mqtt_port = e2e.free_port()
    procs = []
    try:
        with open(os.path.join(a.tmp, "mosquitto.conf"), "w") as fm:
            fm.write(f"listener {a.mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                     "log_type error\nset_tcp_nodelay true\n")
        procs.append(e2e.Proc("mosquitto", ["/usr/sbin/mosquitto", "-c", os.path.join(a.tmp, "mosquitto.conf")], a.tmp))
        a.max_cells = 400
        procs.append(e2e.start_sim(a))
        if not (e2e.wait_port(a.mqtt_port) and e2e.wait_port(a.base) and e2e.wait_port(a.base + 399)):
            raise SystemExit(f"mosquitto or the simulator did not start; logs in {a.tmp}")
        for load in a.loads.split(","):
            cells, period = load.split("x")
            run(a, int(cells), float(period))
            if a.floor:
                run_floor(a, int(cells), float(period))
            if a.ceiling:
                run_ceiling(a, int(cells))
    finally:
        for p in reversed(procs):
            p.stop()
        if a.mallocs:
            # The probes were set for this run: leave the machine's uprobe events as they were.
            subprocess.run(["perf", "probe", "-d", "probe_libc:malloc", "-d", "probe_libc:realloc"],
                           capture_output=True)


if __name__ == "__main__":
    main()
