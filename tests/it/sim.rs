//! Drives `alsentry sim` in-process (port 0) and checks what Modbus clients observe.

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use alsentry::sim::registers::{self, Order, Table, Ty};
use alsentry::sim::{start, DeviceKind, Plant, Scenario, SimHandle, StartOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_modbus::client::{tcp, Context};
use tokio_modbus::prelude::*;

const LAYOUT: &str = r#"
[plant]
seed = 42
tick = "100ms"
line_current_ka = 500.0

[[groups]]
id = "potline"
kind = "cell"
name = "pot-{unit:03}"
listen = "127.0.0.1:5020"
units = "1-3"

[[groups]]
id = "furnace"
kind = "kiln"
name = "kiln-{unit:02}"
listen = "127.0.0.1:5021"
units = "1-2"

[[groups]]
id = "calciner"
kind = "calciner"
name = "calciner-1"
listen = "127.0.0.1:5021"
units = "10"
"#;

const WAIT: Duration = Duration::from_secs(20);

async fn sim(faults: &str) -> SimHandle {
    sim_with(faults, StartOptions::default()).await
}

/// Model time runs 3× faster than wall time: waits are on model ticks, so checks are unchanged.
async fn sim_fast(faults: &str) -> SimHandle {
    sim_with(
        faults,
        StartOptions {
            speed: 3.0,
            ..StartOptions::default()
        },
    )
    .await
}

async fn sim_with(faults: &str, opts: StartOptions) -> SimHandle {
    let scn = Scenario::from_str(&format!("{LAYOUT}\n{faults}")).expect("scenario");
    start(
        scn,
        StartOptions {
            ephemeral_ports: true,
            ..opts
        },
    )
    .await
    .expect("start")
}

async fn connect(h: &SimHandle, device: &str) -> Context {
    let ep = h.endpoint(device).expect("device");
    timeout(WAIT, tcp::connect_slave(ep.addr, Slave(ep.unit)))
        .await
        .expect("connect timeout")
        .expect("connect")
}

type Read = Result<Vec<u16>, ExceptionCode>;

async fn read(ctx: &mut Context, table: Table, addr: u16, n: u16) -> Read {
    let fut = async {
        match table {
            Table::Input => ctx.read_input_registers(addr, n).await,
            Table::Holding => ctx.read_holding_registers(addr, n).await,
            _ => unreachable!(),
        }
    };
    timeout(Duration::from_secs(2), fut)
        .await
        .expect("read timed out")
        .expect("transport")
}

async fn regs(ctx: &mut Context, table: Table, addr: u16, n: u16) -> Vec<u16> {
    read(ctx, table, addr, n).await.expect("exception")
}

fn f32_of(w: &[u16], order: Order) -> f32 {
    let [a, b] = [w[0].to_be_bytes(), w[1].to_be_bytes()];
    let bytes = match order {
        Order::Abcd => [a[0], a[1], b[0], b[1]],
        Order::Cdab => [b[0], b[1], a[0], a[1]],
        Order::Badc => [a[1], a[0], b[1], b[0]],
        Order::Dcba => [b[1], b[0], a[1], a[0]],
    };
    f32::from_be_bytes(bytes)
}

fn u32_of(w: &[u16], order: Order) -> u32 {
    f32_of(w, order).to_bits()
}

/// Cell voltage and resistance at the same tick (input 0..16).
async fn cell_snapshot(ctx: &mut Context) -> Vec<u16> {
    regs(ctx, Table::Input, 0, 16).await
}

fn volts(snap: &[u16]) -> f32 {
    f32_of(&snap[0..2], Order::Cdab)
}

fn amps(snap: &[u16]) -> f32 {
    f32_of(&snap[2..4], Order::Cdab)
}

fn tick_of(h: &SimHandle, t: Duration) -> u64 {
    (t.as_millis() / h.tick_period().as_millis()) as u64
}

async fn at(h: &SimHandle, t: Duration) {
    timeout(WAIT, h.wait_sim_time(t))
        .await
        .expect("simulator stalled");
}

// ---------------------------------------------------------------- encodings

#[test]
fn word_order_test_vector() {
    let bits = 123456.0f32.to_bits();
    for (order, words) in [
        (Order::Abcd, [0x47F1, 0x2000]),
        (Order::Cdab, [0x2000, 0x47F1]),
        (Order::Badc, [0xF147, 0x0020]),
        (Order::Dcba, [0x0020, 0xF147]),
    ] {
        assert_eq!(registers::words32(bits, order), words, "{order:?}");
        assert_eq!(f32_of(&words, order), 123456.0);
    }
}

#[tokio::test]
async fn cell_registers_decode_consistently_in_every_encoding() {
    let h = sim("").await;
    let mut c = connect(&h, "pot-002").await;
    let s = cell_snapshot(&mut c).await;
    let v = volts(&s);
    let i = amps(&s);
    assert!((3.85..4.45).contains(&v), "voltage {v}");
    assert!((494.0..506.0).contains(&i), "current {i}");
    let temp = s[4] as i16 as f32 * 0.1;
    assert!((940.0..970.0).contains(&temp), "bath {temp}");
    let alumina = s[5] as f32 * 0.01;
    assert!((2.2..3.8).contains(&alumina), "alumina {alumina}");
    let r_int = s[6] as f32 * 0.001;
    let r = (v - 1.65) / i * 1000.0;
    assert!((r - r_int).abs() < 0.002, "R {r} vs {r_int}");
    assert!((3.7..6.6).contains(&r), "R {r}");
    assert!((s[9] as f32 * 0.001 - v).abs() < 0.0006, "mV {}", s[9]);
    assert_eq!(f32_of(&s[10..12], Order::Abcd), i, "ABCD current");
    assert_eq!(f32_of(&s[12..14], Order::Badc), v, "BADC voltage");
    assert!((f32_of(&s[14..16], Order::Dcba) - r).abs() < 1e-3, "DCBA R");
    let li = regs(&mut c, Table::Input, 20, 1).await;
    assert!((li[0] as f32 * 0.1 - i).abs() < 2.0);
    let hold = regs(&mut c, Table::Holding, 0, 2).await;
    assert!((4000..=4250).contains(&hold[0]), "target {}", hold[0]);
    assert_eq!(hold[1], 5000);
    let counters = regs(&mut c, Table::Holding, 10, 5).await;
    let feeds = u32_of(&counters[0..2], Order::Abcd);
    assert!(feeds < 100_000, "feeds {feeds}");
    assert!(counters[2] < 20);
    let uptime = u32_of(&counters[3..5], Order::Cdab);
    assert!(uptime < 60);
    // Heartbeat moves with the model tick.
    let hb0 = regs(&mut c, Table::Input, 8, 1).await[0];
    let now = h.tick();
    h.wait_tick(now + 3).await;
    let hb1 = regs(&mut c, Table::Input, 8, 1).await[0];
    assert!(hb1 > hb0, "heartbeat {hb0} -> {hb1}");
    h.stop().await;
}

#[tokio::test]
async fn kiln_and_calciner_registers_are_plausible() {
    let h = sim("").await;
    let mut k = connect(&h, "kiln-01").await;
    let s = regs(&mut k, Table::Holding, 0, 9).await;
    let flue = s[0] as f32 * 0.1;
    let curve = s[2] as f32 * 0.1;
    assert!((100.0..1250.0).contains(&flue), "flue {flue}");
    assert!((flue - curve).abs() < 15.0, "flue {flue} curve {curve}");
    let draft = s[1] as i16;
    assert!((-50..=-10).contains(&draft), "draft {draft}");
    assert!(s[4] < 500, "co {}", s[4]);
    let exhaust = s[6] as i16;
    assert!((-300..=-150).contains(&exhaust), "exhaust {exhaust}");
    let f = regs(&mut k, Table::Holding, 10, 4).await;
    assert!((f32_of(&f[0..2], Order::Dcba) - flue).abs() < 15.0);
    assert!(u32_of(&f[2..4], Order::Cdab) <= 504_000);

    let mut c = connect(&h, "calciner-1").await;
    let s = regs(&mut c, Table::Input, 0, 10).await;
    let temp = f32_of(&s[0..2], Order::Abcd);
    assert!((950.0..1100.0).contains(&temp), "furnace {temp}");
    let o2 = s[2] as f32 * 0.01;
    assert!((1.5..4.0).contains(&o2), "o2 {o2}");
    assert!(s[3] < 200, "co {}", s[3]);
    assert!(
        (-2300..=-1500).contains(&(s[4] as i16)),
        "draft {}",
        s[4] as i16
    );
    assert_eq!(s[6] & 1, 1, "running bit");
    h.stop().await;
}

#[tokio::test]
async fn unmapped_and_invalid_requests_get_the_right_exceptions() {
    let h = sim("").await;
    let mut c = connect(&h, "pot-001").await;
    // The documented gaps: input 18-19 and holding 2-9.
    assert_eq!(
        read(&mut c, Table::Input, 18, 2).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert!(read(&mut c, Table::Input, 16, 2).await.is_ok());
    assert_eq!(
        read(&mut c, Table::Input, 16, 4).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        read(&mut c, Table::Input, 0, 21).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        read(&mut c, Table::Holding, 0, 3).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        read(&mut c, Table::Input, 21, 1).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert!(read(&mut c, Table::Input, 20, 1).await.is_ok());
    // Quantity above the 125-register limit.
    assert_eq!(
        read(&mut c, Table::Input, 0, 126).await,
        Err(ExceptionCode::IllegalDataValue)
    );
    // Only the request registers take writes (docs/DISPOSAL.md); the rest is read-only, and
    // there are no coils to write.
    let w = timeout(WAIT, c.write_single_register(0, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w, Err(ExceptionCode::IllegalDataAddress));
    let w = timeout(WAIT, c.write_single_coil(0, true))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w, Err(ExceptionCode::IllegalFunction));
    let w = timeout(WAIT, c.write_single_register(15, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w, Ok(()));
    assert_eq!(read(&mut c, Table::Holding, 15, 2).await, Ok(vec![1, 0]));
    // Discrete inputs mirror the status bits; coils do not exist.
    let d = timeout(WAIT, c.read_discrete_inputs(0, 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.map(|b| b.len()), Ok(5));
    let co = timeout(WAIT, c.read_coils(0, 1)).await.unwrap().unwrap();
    assert_eq!(co, Err(ExceptionCode::IllegalDataAddress));
    // A unit id with no device behind the gateway: gateway target failed to respond.
    c.set_slave(Slave(99));
    assert_eq!(
        read(&mut c, Table::Input, 0, 2).await,
        Err(ExceptionCode::GatewayTargetDevice)
    );
    let mut k = connect(&h, "kiln-02").await;
    assert_eq!(
        read(&mut k, Table::Holding, 8, 2).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    let mut cal = connect(&h, "calciner-1").await;
    assert_eq!(
        read(&mut cal, Table::Input, 0, 11).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    h.stop().await;
}

// ---------------------------------------------------------------- determinism

#[test]
fn same_scenario_and_seed_give_the_same_values() {
    let scn = Scenario::from_str(&format!(
        "{LAYOUT}\n[[faults]]\nkind = \"anode_effect\"\ndevices = [\"pot-001\"]\nat = \"5s\"\nduration = \"20s\"\nparams = {{ precursor = \"15s\" }}\n"
    ))
    .unwrap();
    let run = |seed| {
        let mut p = Plant::new(scn.clone(), seed);
        let mut trace = Vec::new();
        for _ in 0..400 {
            p.step();
            for d in 0..scn.devices.len() {
                trace.push(p.image(d).unwrap().clone());
            }
        }
        trace
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[tokio::test]
async fn served_values_depend_only_on_seed_and_tick() {
    let h = sim("").await;
    let mut c = connect(&h, "pot-003").await;
    // One request: voltage and the heartbeat (= tick mod 65536) of the same step.
    let s = regs(&mut c, Table::Input, 0, 9).await;
    let tick = u64::from(s[8]);
    let scn = Scenario::from_str(LAYOUT).unwrap();
    let mut p = Plant::new(scn.clone(), h.seed());
    while p.tick() < tick {
        p.step();
    }
    let dev = scn.device_index("pot-003").unwrap();
    assert_eq!(&p.image(dev).unwrap().input[0..9], &s[..]);
    h.stop().await;
}

// ---------------------------------------------------------------- process faults

#[tokio::test]
async fn anode_effect_has_rising_r_and_noise_then_a_voltage_jump_then_recovers() {
    let h = sim_fast(
        r#"
[[faults]]
kind = "anode_effect"
devices = ["pot-002"]
at = "1s"
duration = "5s"
params = { precursor = "3s", v_min = 12.0, v_max = 30.0 }
"#,
    )
    .await;
    let mut c = connect(&h, "pot-002").await;
    let mut samples = Vec::new();
    let start = tick_of(&h, Duration::from_secs(1));
    for k in start - 5..start + 60 {
        h.wait_tick(k).await;
        let s = regs(&mut c, Table::Input, 0, 16).await;
        samples.push((h.tick(), s));
    }
    let onset = start + 30;
    let r = |s: &[u16]| f32_of(&s[14..16], Order::Dcba);
    let pre: Vec<&(u64, Vec<u16>)> = samples.iter().filter(|(t, _)| *t < start).collect();
    let late_precursor: Vec<&(u64, Vec<u16>)> = samples
        .iter()
        .filter(|(t, _)| *t >= onset - 6 && *t < onset)
        .collect();
    let r0 = r(&pre[0].1);
    let r1 = r(&late_precursor.last().expect("samples before onset").1);
    assert!(r1 > r0 + 0.3, "R did not rise: {r0} -> {r1}");
    for (_, s) in &late_precursor {
        assert!(volts(s) < 8.0, "AE before onset");
        assert_eq!(s[7] & 0b1000, 0b1000, "underfeed bit during precursor");
    }
    let during: Vec<&(u64, Vec<u16>)> = samples
        .iter()
        .filter(|(t, _)| *t > onset + 1 && *t < start + 48)
        .collect();
    assert!(!during.is_empty());
    for (_, s) in &during {
        let v = volts(s);
        assert!(v > 8.0, "AE voltage {v}");
        assert_eq!(s[7] & 0b10, 0b10, "ae_active bit");
    }
    let (_, last) = samples.last().unwrap();
    assert!(volts(last) < 5.0, "not killed: {}", volts(last));
    assert_eq!(last[7] & 0b10, 0);
    let ae = regs(&mut c, Table::Holding, 12, 1).await[0];
    let ae_before = {
        let scn = Scenario::from_str(LAYOUT).unwrap();
        let mut p = Plant::new(scn.clone(), h.seed());
        p.step();
        p.image(scn.device_index("pot-002").unwrap())
            .unwrap()
            .holding[12]
    };
    assert_eq!(ae, ae_before + 1, "AE counter");
    h.stop().await;
}

fn std_dev(xs: &[f32]) -> f32 {
    let m = xs.iter().sum::<f32>() / xs.len() as f32;
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f32>() / xs.len() as f32).sqrt()
}

async fn voltages(h: &SimHandle, c: &mut Context, from: u64, n: u64) -> Vec<f32> {
    let mut out = Vec::new();
    for k in from..from + n {
        h.wait_tick(k).await;
        out.push(volts(&cell_snapshot(c).await));
    }
    out
}

#[tokio::test]
async fn noise_burst_raises_voltage_noise() {
    let h = sim_fast(
        r#"
[[faults]]
kind = "noise_burst"
devices = ["pot-001"]
at = "3s"
duration = "10s"
params = { noise_gain = 5.0, pad_mv = 60.0 }
"#,
    )
    .await;
    let mut c = connect(&h, "pot-001").await;
    let before = voltages(&h, &mut c, 2, 25).await;
    let during = voltages(&h, &mut c, 32, 25).await;
    let (a, b) = (std_dev(&before), std_dev(&during));
    assert!(b > 2.5 * a, "noise {a} -> {b}");
    h.stop().await;
}

#[tokio::test]
async fn hot_cell_drifts_bath_temperature_and_voltage_up() {
    let h = sim_fast(
        r#"
[[faults]]
kind = "hot_cell"
devices = ["pot-003"]
at = "1s"
duration = "3s"
params = { temp_rise_c = 20.0, voltage_rise_mv = 200.0 }
"#,
    )
    .await;
    let mut c = connect(&h, "pot-003").await;
    let t0 = regs(&mut c, Table::Input, 4, 1).await[0] as i16;
    at(&h, Duration::from_millis(3900)).await;
    let t1 = regs(&mut c, Table::Input, 4, 1).await[0] as i16;
    assert!(t1 - t0 > 150, "bath {t0} -> {t1} (0.1 degC)");
    h.stop().await;
}

#[tokio::test]
async fn line_current_drop_hits_every_cell() {
    let h = sim_fast(
        r#"
[[faults]]
kind = "line_current_drop"
devices = ["potline"]
at = "1s"
duration = "3s"
params = { fraction = 0.9, ramp = "200ms" }
"#,
    )
    .await;
    at(&h, Duration::from_millis(1600)).await;
    for pot in ["pot-001", "pot-002", "pot-003"] {
        let mut c = connect(&h, pot).await;
        let s = cell_snapshot(&mut c).await;
        let i = amps(&s);
        assert!((440.0..460.0).contains(&i), "{pot} current {i}");
        assert_eq!(s[7] & 0b1_0000, 0b1_0000, "line_low bit");
    }
    at(&h, Duration::from_millis(4500)).await;
    let mut c = connect(&h, "pot-001").await;
    assert!(amps(&cell_snapshot(&mut c).await) > 490.0);
    h.stop().await;
}

#[tokio::test]
async fn potline_outage_drops_all_cells_to_zero_current() {
    let h = sim_fast(
        r#"
[[faults]]
kind = "potline_outage"
at = "1s"
duration = "3s"
"#,
    )
    .await;
    at(&h, Duration::from_millis(2300)).await;
    for pot in ["pot-001", "pot-002", "pot-003"] {
        let mut c = connect(&h, pot).await;
        let s = cell_snapshot(&mut c).await;
        assert!(amps(&s) < 1.0, "{pot} current {}", amps(&s));
        assert!(volts(&s) < 1.65, "{pot} voltage {}", volts(&s));
    }
    h.stop().await;
}

#[tokio::test]
async fn curve_lag_puts_flue_temperature_below_the_curve() {
    let h = sim_fast(
        r#"
[[faults]]
kind = "curve_lag"
devices = ["kiln-02"]
at = "1s"
duration = "2s"
params = { lag_c = 80.0 }
"#,
    )
    .await;
    let mut k = connect(&h, "kiln-02").await;
    at(&h, Duration::from_millis(2900)).await;
    let s = regs(&mut k, Table::Holding, 0, 3).await;
    let (flue, curve) = (s[0] as f32 * 0.1, s[2] as f32 * 0.1);
    assert!(curve - flue > 60.0, "flue {flue} curve {curve}");
    h.stop().await;
}

#[tokio::test]
async fn draft_loss_shows_on_kiln_and_calciner() {
    let h = sim(r#"
[[faults]]
kind = "draft_loss"
devices = ["kiln-01", "calciner-1"]
at = "1s"
duration = "3s"
params = { to_pa = -2.0, ramp = "500ms" }
"#)
    .await;
    at(&h, Duration::from_millis(2000)).await;
    let mut k = connect(&h, "kiln-01").await;
    let s = regs(&mut k, Table::Holding, 0, 8).await;
    assert!((s[1] as i16) > -5, "draft {}", s[1] as i16);
    assert_eq!(s[7] & 0b100, 0b100, "draft_low bit");
    let mut c = connect(&h, "calciner-1").await;
    let s = regs(&mut c, Table::Input, 4, 1).await;
    assert!((s[0] as i16) > -5, "calciner draft {}", s[0] as i16);
    h.stop().await;
}

#[tokio::test]
async fn incomplete_combustion_raises_co_and_lowers_o2() {
    let h = sim(r#"
[[faults]]
kind = "incomplete_combustion"
devices = ["kiln-02", "calciner-1"]
at = "1s"
duration = "3s"
params = { co_ppm = 2500.0, o2_pct = 0.8, ramp = "500ms" }
"#)
    .await;
    at(&h, Duration::from_millis(2000)).await;
    let mut k = connect(&h, "kiln-02").await;
    let s = regs(&mut k, Table::Holding, 4, 2).await;
    assert!(s[0] > 1000 && s[1] < 150, "kiln co {} o2 {}", s[0], s[1]);
    let mut c = connect(&h, "calciner-1").await;
    let s = regs(&mut c, Table::Input, 2, 2).await;
    assert!(
        s[1] > 1000 && s[0] < 150,
        "calciner co {} o2 {}",
        s[1],
        s[0]
    );
    h.stop().await;
}

// ---------------------------------------------------------------- sensor faults

#[tokio::test]
async fn frozen_sensor_repeats_the_same_value_while_the_heartbeat_moves() {
    let h = sim_fast(
        r#"
[[faults]]
kind = "frozen"
devices = ["pot-001"]
at = "1s"
duration = "4s"
params = { signal = "voltage" }
"#,
    )
    .await;
    let mut c = connect(&h, "pot-001").await;
    let mut seen = Vec::new();
    for k in 12..30 {
        h.wait_tick(k).await;
        let s = regs(&mut c, Table::Input, 0, 10).await;
        seen.push((s[0], s[1], s[9], s[8]));
    }
    assert!(seen
        .windows(2)
        .all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1 && w[0].2 == w[1].2));
    assert!(
        seen.first().unwrap().3 != seen.last().unwrap().3,
        "heartbeat frozen too"
    );
    h.stop().await;
}

#[tokio::test]
async fn dropout_reads_zero_or_nan() {
    let h = sim(r#"
[[faults]]
kind = "dropout"
devices = ["pot-001"]
at = "1s"
duration = "3s"
params = { signal = "voltage", mode = "zero" }

[[faults]]
kind = "dropout"
devices = ["pot-002"]
at = "1s"
duration = "3s"
params = { signal = "voltage", mode = "nan" }
"#)
    .await;
    at(&h, Duration::from_millis(1500)).await;
    let mut c = connect(&h, "pot-001").await;
    let s = cell_snapshot(&mut c).await;
    assert_eq!(volts(&s), 0.0);
    assert_eq!(s[9], 0);
    let mut c = connect(&h, "pot-002").await;
    let s = cell_snapshot(&mut c).await;
    assert!(volts(&s).is_nan());
    assert!(f32_of(&s[12..14], Order::Badc).is_nan());
    assert_eq!(s[9], 0xFFFF, "NaN sentinel in scaled u16");
    h.stop().await;
}

#[tokio::test]
async fn out_of_range_value_is_served() {
    let h = sim(r#"
[[faults]]
kind = "out_of_range"
devices = ["pot-003"]
at = "1s"
duration = "3s"
params = { signal = "voltage", value = 150.0 }

[[faults]]
kind = "out_of_range"
devices = ["kiln-01"]
at = "1s"
duration = "3s"
"#)
    .await;
    at(&h, Duration::from_millis(1500)).await;
    let mut c = connect(&h, "pot-003").await;
    let s = cell_snapshot(&mut c).await;
    assert_eq!(volts(&s), 150.0);
    assert_eq!(s[9], 0xFFFF, "mV saturates");
    let mut k = connect(&h, "kiln-01").await;
    assert_eq!(regs(&mut k, Table::Holding, 0, 1).await[0], 25000);
    h.stop().await;
}

// ---------------------------------------------------------------- communication faults

#[tokio::test]
async fn silent_unit_times_out_while_its_neighbours_answer() {
    let h = sim(r#"
[[faults]]
kind = "unit_silent"
devices = ["pot-002"]
at = "500ms"
duration = "3s"
"#)
    .await;
    at(&h, Duration::from_millis(700)).await;
    let mut c = connect(&h, "pot-002").await;
    let r = timeout(Duration::from_millis(300), c.read_input_registers(0, 2)).await;
    assert!(r.is_err(), "expected a timeout, got {r:?}");
    let mut other = connect(&h, "pot-001").await;
    assert!(read(&mut other, Table::Input, 0, 2).await.is_ok());
    at(&h, Duration::from_millis(3700)).await;
    let mut c = connect(&h, "pot-002").await;
    assert!(read(&mut c, Table::Input, 0, 2).await.is_ok());
    h.stop().await;
}

#[tokio::test]
async fn slow_unit_answers_after_the_client_timeout() {
    let h = sim(r#"
[[faults]]
kind = "slow_unit"
devices = ["kiln-02"]
at = "500ms"
duration = "5s"
params = { delay = "800ms" }
"#)
    .await;
    at(&h, Duration::from_millis(700)).await;
    let mut k = connect(&h, "kiln-02").await;
    let r = timeout(Duration::from_millis(300), k.read_holding_registers(0, 2)).await;
    assert!(r.is_err(), "expected a timeout");
    let mut k = connect(&h, "kiln-02").await;
    let t0 = std::time::Instant::now();
    let r = timeout(Duration::from_secs(3), k.read_holding_registers(0, 2)).await;
    assert!(matches!(r, Ok(Ok(Ok(ref v))) if v.len() == 2), "{r:?}");
    assert!(t0.elapsed() >= Duration::from_millis(750));
    h.stop().await;
}

#[tokio::test]
async fn exception_faults_answer_with_the_configured_codes() {
    let h = sim(r#"
[[faults]]
kind = "exception"
devices = ["pot-001"]
at = "500ms"
duration = "5s"
params = { code = 2, table = "holding", address = 10, count = 2 }

[[faults]]
kind = "exception"
devices = ["pot-002"]
at = "500ms"
duration = "5s"
params = { code = 4 }

[[faults]]
kind = "exception"
devices = ["kiln-01"]
at = "500ms"
duration = "5s"
params = { code = 6 }

[[faults]]
kind = "exception"
devices = ["pot-003"]
at = "500ms"
duration = "5s"
params = { code = 11 }
"#)
    .await;
    at(&h, Duration::from_millis(700)).await;
    let mut c = connect(&h, "pot-001").await;
    assert_eq!(
        read(&mut c, Table::Holding, 10, 2).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        read(&mut c, Table::Holding, 11, 3).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert!(
        read(&mut c, Table::Holding, 12, 3).await.is_ok(),
        "block only"
    );
    assert!(
        read(&mut c, Table::Input, 0, 2).await.is_ok(),
        "other table"
    );
    let mut c = connect(&h, "pot-002").await;
    assert_eq!(
        read(&mut c, Table::Input, 0, 2).await,
        Err(ExceptionCode::ServerDeviceFailure)
    );
    let mut k = connect(&h, "kiln-01").await;
    assert_eq!(
        read(&mut k, Table::Holding, 0, 2).await,
        Err(ExceptionCode::ServerDeviceBusy)
    );
    let mut c = connect(&h, "pot-003").await;
    assert_eq!(
        read(&mut c, Table::Input, 0, 2).await,
        Err(ExceptionCode::GatewayTargetDevice)
    );
    h.stop().await;
}

fn mbap_read(tid: u16, unit: u8, fc: u8, addr: u16, qty: u16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&tid.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 6, unit, fc]);
    v.extend_from_slice(&addr.to_be_bytes());
    v.extend_from_slice(&qty.to_be_bytes());
    v
}

async fn raw_exchange(addr: SocketAddr, req: &[u8]) -> (Vec<u8>, bool) {
    let mut s = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let closed = loop {
        match timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    (got, closed)
}

#[tokio::test]
async fn conn_drop_closes_the_connection_mid_reply() {
    let h = sim(r#"
[[faults]]
kind = "conn_drop"
devices = ["pot-002"]
at = "500ms"
duration = "5s"
params = { after_bytes = 3 }
"#)
    .await;
    at(&h, Duration::from_millis(700)).await;
    let ep = h.endpoint("pot-002").unwrap().clone();
    let (got, closed) = raw_exchange(ep.addr, &mbap_read(0x1234, ep.unit, 4, 0, 2)).await;
    assert!(closed, "connection stays open");
    assert_eq!(got, vec![0x12, 0x34, 0x00], "partial MBAP header");
    // A tokio-modbus client sees a transport error, not a reply.
    let mut c = connect(&h, "pot-002").await;
    let r = timeout(Duration::from_secs(2), c.read_input_registers(0, 2))
        .await
        .unwrap();
    assert!(r.is_err(), "{r:?}");
    // Other units behind the same gateway still answer on a new connection.
    let (got, closed) = raw_exchange(ep.addr, &mbap_read(1, 1, 4, 0, 2)).await;
    assert!(!closed);
    assert_eq!(got.len(), 9 + 4);
    h.stop().await;
}

#[tokio::test]
async fn hostile_replies_break_the_protocol_in_the_configured_way() {
    let h = sim(r#"
[[faults]]
kind = "hostile_reply"
devices = ["pot-001"]
at = "500ms"
duration = "5s"
params = { mode = "wrong_tid" }

[[faults]]
kind = "hostile_reply"
devices = ["pot-002"]
at = "500ms"
duration = "5s"
params = { mode = "wrong_fc" }

[[faults]]
kind = "hostile_reply"
devices = ["pot-003"]
at = "500ms"
duration = "5s"
params = { mode = "wrong_length" }

[[faults]]
kind = "hostile_reply"
devices = ["kiln-01"]
at = "500ms"
duration = "5s"
params = { mode = "unsolicited" }
"#)
    .await;
    at(&h, Duration::from_millis(700)).await;
    let addr = h.endpoint("pot-001").unwrap().addr;
    let (got, _) = raw_exchange(addr, &mbap_read(0x0100, 1, 4, 0, 2)).await;
    assert_eq!(&got[0..2], &[0x01, 0x01], "transaction id");
    let (got, _) = raw_exchange(addr, &mbap_read(5, 2, 4, 0, 2)).await;
    assert_eq!(got[7], 3, "function code");
    let (got, _) = raw_exchange(addr, &mbap_read(5, 3, 4, 0, 2)).await;
    let len = u16::from_be_bytes([got[4], got[5]]) as usize;
    assert_ne!(len, got.len() - 6, "length field");
    let kaddr = h.endpoint("kiln-01").unwrap().addr;
    let (got, _) = raw_exchange(kaddr, &mbap_read(9, 1, 3, 0, 2)).await;
    assert_eq!(got.len(), 2 * (9 + 4), "two frames");
    assert_ne!(&got[0..2], &[0, 9]);
    assert_eq!(&got[13..15], &[0, 9]);
    h.stop().await;
}

// ---------------------------------------------------------------- ground truth

#[tokio::test]
async fn ground_truth_records_start_and_end_of_each_fault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truth.jsonl");
    let h = sim_with(
        r#"
[[faults]]
kind = "anode_effect"
devices = ["pot-003"]
at = "500ms"
duration = "1500ms"
params = { precursor = "1s" }

[[faults]]
kind = "potline_outage"
devices = ["potline"]
at = "1s"
duration = "500ms"
"#,
        StartOptions {
            truth: Some(path.clone()),
            ..StartOptions::default()
        },
    )
    .await;
    at(&h, Duration::from_millis(2200)).await;
    let events = h.truth();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), events.len());
    // AE on one cell (start + end) and the outage on all 3 cells (start + end each).
    assert_eq!(lines.len(), 2 + 6);
    let ae: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["kind"] == "anode_effect")
        .collect();
    assert_eq!(ae.len(), 2);
    assert_eq!(ae[0]["phase"], "start");
    assert_eq!(ae[1]["phase"], "end");
    assert_eq!(ae[0]["device"], "pot-003");
    let (s, o, e) = (
        ae[0]["start_ms"].as_i64().unwrap(),
        ae[0]["onset_ms"].as_i64().unwrap(),
        ae[0]["end_ms"].as_i64().unwrap(),
    );
    assert_eq!((o - s, e - s), (1000, 1500));
    assert!(ae[0]["start"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ae[0]["params"]["precursor"], "1s");
    let outage_devices: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "potline_outage" && l["phase"] == "start")
        .map(|l| l["device"].as_str().unwrap())
        .collect();
    assert_eq!(outage_devices, ["pot-001", "pot-002", "pot-003"]);
    h.stop().await;
}

// ---------------------------------------------------------------- RTU

#[tokio::test]
async fn rtu_line_serves_the_same_map() {
    // A pseudo-terminal pair is the serial line: the simulator opens the far end by its path
    // (as it would /dev/ttyUSB0), the client talks on the near end. Ours to the far end stays
    // open until the end so the line never hangs up.
    use tokio_serial::SerialPort;
    let (near, far) = tokio_serial::SerialStream::pair().expect("a pseudo-terminal pair");
    let line = far.name().expect("the far end's path");
    let scn = Scenario::from_str(&format!(
        r#"
[[groups]]
id = "potline"
kind = "cell"
name = "pot-{{unit:03}}"
listen = "127.0.0.1:5020"
units = "1-2"
serial = "{}"
baud = 115200
"#,
        line
    ))
    .unwrap();
    let h = start(
        scn,
        StartOptions {
            ephemeral_ports: true,
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let mut c = tokio_modbus::client::rtu::attach_slave(near, Slave(2));
    let s = timeout(Duration::from_secs(3), c.read_input_registers(0, 4))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!((3.85..4.45).contains(&volts(&s)), "{}", volts(&s));
    let e = timeout(Duration::from_secs(3), c.read_input_registers(18, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e, Err(ExceptionCode::IllegalDataAddress));
    h.stop().await;
    drop(far);
}

// ---------------------------------------------------------------- realistic cells (issue 12)

/// The controller context of a realistic cell reaches a Modbus client: the tapping and
/// anode-change bits, and the beam position moving; the ground truth file names each
/// disturbance with its class, and `alsentry replay` reads it.
#[tokio::test]
async fn realistic_cell_serves_controller_context_and_writes_its_truth() {
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.jsonl");
    let scn = Scenario::from_str(
        r#"
[plant]
seed = 5
realism = true
[[groups]]
id = "potline"
kind = "cell"
name = "pot-{unit:03}"
listen = "127.0.0.1:5020"
units = "1-2"
[[faults]]
kind = "tapping"
devices = ["pot-001"]
at = "1s"
duration = "3s"
[[faults]]
kind = "anode_change"
devices = ["pot-002"]
at = "1s"
duration = "20s"
params = { flag = "3s" }
[[faults]]
kind = "beam_move"
devices = ["pot-002"]
at = "1s"
duration = "5s"
params = { mm = -1.0 }
[[faults]]
kind = "sensor_noise"
devices = ["pot-001"]
at = "5s"
duration = "1s"
"#,
    )
    .unwrap();
    let h = start(
        scn,
        StartOptions {
            ephemeral_ports: true,
            speed: 4.0,
            truth: Some(truth_path.clone()),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let mut c1 = connect(&h, "pot-001").await;
    let mut c2 = connect(&h, "pot-002").await;
    let beam = |s: &[u16]| f32_of(&s[16..18], Order::Cdab);
    let before = regs(&mut c2, Table::Input, 0, 18).await;
    at(&h, Duration::from_secs(2)).await;
    let s1 = regs(&mut c1, Table::Input, 7, 1).await;
    let s2 = regs(&mut c2, Table::Input, 7, 1).await;
    assert_eq!(s1[0] & (1 << 5), 1 << 5, "tapping bit");
    assert_eq!(s2[0] & (1 << 6), 1 << 6, "anode change bit");
    let d = timeout(WAIT, c1.read_discrete_inputs(5, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d, Ok(vec![true, false]));
    at(&h, Duration::from_secs(8)).await;
    let after = regs(&mut c2, Table::Input, 0, 18).await;
    assert!(
        (beam(&before) - beam(&after) - 1.0).abs() < 1e-3,
        "beam {} -> {}",
        beam(&before),
        beam(&after)
    );
    assert!((150.0..350.0).contains(&beam(&after)));
    let s1 = regs(&mut c1, Table::Input, 7, 1).await;
    let s2 = regs(&mut c2, Table::Input, 7, 1).await;
    assert_eq!((s1[0] | s2[0]) & (3 << 5), 0, "flags down");
    h.stop().await;

    let text = std::fs::read_to_string(&truth_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let class_of = |kind: &str| {
        lines
            .iter()
            .find(|l| l["kind"] == kind)
            .map(|l| l["class"].as_str().unwrap().to_string())
    };
    assert_eq!(class_of("tapping").as_deref(), Some("operation"));
    assert_eq!(class_of("anode_change").as_deref(), Some("operation"));
    assert_eq!(class_of("beam_move").as_deref(), Some("operation"));
    assert_eq!(class_of("sensor_noise").as_deref(), Some("sensor"));
    let (faults, problems) = alsentry::replay::score::parse_truth(&text);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(faults.len() >= 4, "{faults:?}");
}

/// config/scenarios/ae_kinds.toml on the pure model: each precursor kind looks as documented,
/// and the controller lowers the beam during the slow precursor (R leaves its band).
#[test]
fn ae_kinds_slow_fast_and_sudden() {
    use alsentry::sim::cell::sig;
    let s = Scenario::from_file(repo("config/scenarios/ae_kinds.toml")).unwrap();
    let idx = |n: &str| s.device_index(n).unwrap();
    let (slow, fast, none) = (idx("pot-002"), idx("pot-005"), idx("pot-007"));
    let mut p = Plant::new(s, 35);
    let per_s = 10; // 100 ms ticks
    let mut trace: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); 3];
    let mut precursors = Vec::new();
    for tick in 1..=(45 * 60 * per_s) {
        for tr in p.step() {
            if let Some(k) = tr.spec.kind.precursor() {
                precursors.push((tr.device, k));
            }
        }
        if tick % per_s == 0 {
            for (i, d) in [slow, fast, none].into_iter().enumerate() {
                let x = p.signals(d).unwrap();
                trace[i].push((x[sig::VOLTAGE], x[sig::RESISTANCE], x[sig::BEAM_POSITION]));
            }
        }
    }
    assert!(precursors.contains(&(slow, "slow")));
    assert!(precursors.contains(&(fast, "fast")));
    assert!(precursors.contains(&(none, "none")));
    let mean_r = |v: &[(f64, f64, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
    // Slow: 20 min from 20:00, AE at 40:00 (second 2400).
    let t = &trace[0];
    assert!(t[2402].0 > 8.0, "slow AE on");
    assert!(t[2395].0 < 5.0, "not before");
    let lowered = t[1195].2 - t[2395].2;
    assert!(
        lowered >= 1.0,
        "beam lowered {lowered} mm during the precursor"
    );
    let rise = mean_r(&t[2335..2395]) - mean_r(&t[1135..1195]);
    assert!(
        (0.02..0.26).contains(&rise),
        "R rise seen through the moves: {rise}"
    );
    // Fast: 3 min from 30:00, AE at 33:00.
    let t = &trace[1];
    assert!(t[1982].0 > 8.0 && t[1975].0 < 5.0);
    let rise = mean_r(&t[1960..1975]) - mean_r(&t[1770..1795]);
    assert!(rise > 0.05, "fast R rise {rise}");
    // Sudden: no change in R before the jump at 40:00.
    let t = &trace[2];
    assert!(t[2402].0 > 8.0 && t[2395].0 < 5.0);
    let drift = (mean_r(&t[2335..2395]) - mean_r(&t[2095..2155])).abs();
    assert!(drift < 0.03, "no precursor: {drift}");
}

// ---------------------------------------------------------------- shipped files

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn shipped_scenarios_parse_and_cover_every_fault_kind() {
    let mut kinds = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(repo("config/scenarios")).unwrap() {
        let path = entry.unwrap().path();
        let s = Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if alsentry::sim::faults::KINDS.contains(&stem.as_str()) {
            assert!(s.fault_kinds().iter().all(|k| *k == stem), "{stem}");
            assert!(!s.faults.is_empty(), "{stem}");
        }
        kinds.extend(s.fault_kinds());
    }
    for k in alsentry::sim::faults::KINDS {
        assert!(kinds.contains(k), "no shipped scenario for {k}");
        assert!(
            repo(&format!("config/scenarios/{k}.toml")).exists(),
            "{k}.toml"
        );
    }
    let big = Scenario::from_file(repo("config/scenarios/potline_400.toml")).unwrap();
    let count = |k| big.devices.iter().filter(|d| d.kind == k).count();
    assert_eq!(
        (count(DeviceKind::Cell), count(DeviceKind::Kiln)),
        (400, 20)
    );
}

#[test]
fn demo_shows_precursor_ae_and_recovery_within_a_minute() {
    let s = Scenario::from_file(repo("config/scenarios/demo.toml")).unwrap();
    let ae = &s.faults[0];
    let secs = |t: u64| t as f64 * s.tick.as_secs_f64();
    let onset = ae.onset_tick.unwrap();
    assert!((30.0..=40.0).contains(&(secs(onset) - secs(ae.start_tick))));
    assert!((10.0..=15.0).contains(&(secs(ae.end_tick) - secs(onset))));
    assert!(secs(ae.end_tick) <= 60.0);
}

/// `ALSENTRY_REGEN=1 cargo test --test it shipped_templates` rewrites the generated files.
#[test]
fn shipped_templates_match_the_register_map() {
    for kind in [DeviceKind::Cell, DeviceKind::Kiln, DeviceKind::Calciner] {
        let path = repo(&format!("config/templates/{}.toml", kind.as_str()));
        let want = registers::template_toml(kind);
        if std::env::var_os("ALSENTRY_REGEN").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let got: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let want: toml::Value = toml::from_str(&want).unwrap();
        assert_eq!(got, want, "{} is stale; regenerate", path.display());
        // Every tag has the fields the agent needs, with valid values.
        let tags = got["templates"][kind.as_str()]["tags"].as_array().unwrap();
        for t in tags {
            let table = t["table"].as_str().unwrap();
            assert!(["coil", "discrete", "holding", "input"].contains(&table));
            assert!(t["address"].as_integer().is_some());
        }
    }
    // The docs carry the same tables, between `<!-- map:KIND -->` markers.
    let docs_path = repo("docs/SIMULATOR.md");
    let mut docs = std::fs::read_to_string(&docs_path).unwrap();
    if std::env::var_os("ALSENTRY_REGEN").is_some() {
        for kind in [DeviceKind::Cell, DeviceKind::Kiln, DeviceKind::Calciner] {
            let (open, close) = (
                format!("<!-- map:{} -->\n", kind.as_str()),
                format!("<!-- /map:{} -->", kind.as_str()),
            );
            let a = docs.find(&open).expect("open marker") + open.len();
            let b = docs.find(&close).expect("close marker");
            docs.replace_range(a..b, &registers::markdown_table(kind));
        }
        std::fs::write(&docs_path, &docs).unwrap();
    }
    for kind in [DeviceKind::Cell, DeviceKind::Kiln, DeviceKind::Calciner] {
        assert!(
            docs.contains(&registers::markdown_table(kind)),
            "docs/SIMULATOR.md register table for {} is stale",
            kind.as_str()
        );
    }
}

#[test]
fn example_agent_compatibility_registers() {
    // The project's example agent config reads these; keep them stable.
    let find = |kind, name: &str| {
        *registers::map(kind)
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let v = find(DeviceKind::Cell, "voltage");
    assert_eq!(
        (v.table, v.address, v.ty, v.order),
        (Table::Input, 0, Ty::F32, Order::Cdab)
    );
    let i = find(DeviceKind::Cell, "current");
    assert_eq!(
        (i.table, i.address, i.ty, i.order),
        (Table::Input, 2, Ty::F32, Order::Cdab)
    );
    let t = find(DeviceKind::Cell, "bath_temp");
    assert_eq!(
        (t.table, t.address, t.ty, t.scale),
        (Table::Input, 4, Ty::I16, 0.1)
    );
    let f = find(DeviceKind::Cell, "feed_count");
    assert_eq!(
        (f.table, f.address, f.ty, f.order),
        (Table::Holding, 10, Ty::U32, Order::Abcd)
    );
    let k = find(DeviceKind::Kiln, "flue_temp");
    assert_eq!(
        (k.table, k.address, k.ty, k.scale),
        (Table::Holding, 0, Ty::U16, 0.1)
    );
    let d = find(DeviceKind::Kiln, "draft");
    assert_eq!((d.table, d.address, d.ty), (Table::Holding, 1, Ty::I16));
}

#[test]
fn sim_agent_config_matches_the_normal_plant() {
    let cfg: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo("config/sim.toml")).unwrap()).unwrap();
    let scn = Scenario::from_file(repo("config/scenarios/normal.toml")).unwrap();
    let mut names = Vec::new();
    for d in cfg["devices"].as_array().unwrap() {
        let endpoint = d["endpoint"].as_str().unwrap();
        let listen = endpoint.trim_start_matches("tcp://");
        let units: Vec<u32> = match (d.get("units"), d.get("unit")) {
            (Some(u), _) => {
                alsentry::core::expand::parse_int_ranges(u.as_str().unwrap(), 0, 255).unwrap()
            }
            (None, Some(u)) => vec![u.as_integer().unwrap() as u32],
            _ => panic!("device without unit"),
        };
        for u in units {
            let name =
                alsentry::sim::scenario::expand_name(d["name"].as_str().unwrap(), &[("unit", u)])
                    .unwrap();
            let dev = scn
                .devices
                .iter()
                .find(|x| x.name == name)
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(dev.listen, listen, "{name}");
            assert_eq!(u32::from(dev.unit), u, "{name}");
            assert_eq!(d["template"].as_str().unwrap(), dev.kind.as_str());
            names.push(name);
        }
    }
    assert_eq!(names.len(), scn.devices.len());
}

#[test]
fn mixed_long_opens_and_closes_every_fault() {
    let scn = Scenario::from_file(repo("config/scenarios/mixed_long.toml")).unwrap();
    let last_end = scn.faults.iter().map(|f| f.end_tick).max().unwrap();
    let mut p = Plant::new(scn.clone(), scn.plant.seed);
    let (mut starts, mut ends) = (0usize, 0usize);
    while p.tick() <= last_end {
        for tr in p.step() {
            match tr.phase {
                alsentry::sim::plant::Phase::Start => starts += 1,
                alsentry::sim::plant::Phase::End => ends += 1,
            }
        }
    }
    let expected: usize = scn.faults.iter().map(|f| f.targets.len()).sum();
    assert_eq!((starts, ends), (expected, expected));
    assert!(scn.faults.len() >= 15);
}
