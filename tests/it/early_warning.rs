//! The presets against the simulator's scenarios, on simulated time (see EARLY-WARNING.md):
//! the figures published there are checked here on shorter runs.

use std::path::Path;

use alsentry::config::Config;
use alsentry::sim::Scenario;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(scenario: &str, minutes: i64) -> alsentry::evaluate::Report {
    let cfg = Config::load(&root().join("config/sim.toml")).unwrap();
    let sc = Scenario::from_file(root().join("config/scenarios").join(scenario)).unwrap();
    let seed = sc.plant.seed;
    alsentry::evaluate::run(&cfg, sc, seed, Some(minutes * 60_000)).unwrap()
}

#[test]
fn the_anode_effect_is_warned_minutes_ahead_and_raised_within_5_s() {
    let r = run("anode_effect.toml", 20);
    let ae: Vec<_> = r
        .faults
        .iter()
        .filter(|f| f.kind == "anode_effect")
        .collect();
    assert_eq!(ae.len(), 1);
    let (rule, delay) = ae[0].detected.clone().expect("anode effect alarm");
    assert_eq!(rule, "anode_effect");
    assert!(delay <= 5_000, "raised {delay} ms after onset");
    let (_, lead) = ae[0].warned.clone().expect("early warning before onset");
    assert!(lead >= 60_000, "lead {lead} ms");
    assert_eq!(r.false_warnings, 0);
}

#[test]
fn a_potline_outage_raises_one_line_alarm() {
    let r = run("potline_outage.toml", 15);
    assert_eq!(
        r.outage_annunciations.values().sum::<usize>(),
        1,
        "{:?}",
        r.outage_annunciations
    );
    assert_eq!(r.outage_annunciations.get("line_current_loss"), Some(&1));
    assert_eq!(r.false_warnings, 0, "no trend faked after the outage");
}

#[test]
fn normal_operation_raises_nothing() {
    let r = run("normal.toml", 60);
    assert_eq!(r.annunciations, 0, "{:?}", r.by_rule);
}
