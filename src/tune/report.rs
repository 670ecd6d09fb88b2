//! `DIR/report.html`: one figure per anode effect (voltage, pseudo-resistance and its slope over
//! the half hour before it, with the warning and alarm spans of the configured rules) and the
//! trade-off of each swept rule, as inline SVG drawn with plotters' SVG backend. One
//! self-contained file: it opens anywhere, also offline.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::core::model::Ts;

use super::data::AnodeEffect;
use super::sweep::{Score, Setting, Span};

/// A figure's data for one anode effect.
#[derive(Debug)]
pub struct EffectFigure<'a> {
    pub effect: &'a AnodeEffect,
    pub device: &'a str,
    /// (ts, voltage, pseudo-resistance) as the engine saw them.
    pub points: &'a [(Ts, f64, f64)],
    pub resistance_tag: &'a str,
    /// Slope window (least squares), and what the slope is per.
    pub slope_window_ms: Ts,
    pub slope_per_ms: Ts,
    /// Activations of the configured rules on the device that overlap the figure.
    pub spans: Vec<&'a Span>,
    pub before_ms: Ts,
    pub after_ms: Ts,
}

/// A swept rule's results.
#[derive(Debug)]
pub struct RuleResult<'a> {
    pub rule: &'a str,
    pub description: String,
    pub rows: Vec<(&'a Setting, &'a Score)>,
    pub proposed: Option<usize>,
}

#[derive(Debug)]
pub struct Report<'a> {
    pub title: String,
    pub summary: Vec<(String, String)>,
    pub effects: Vec<EffectFigure<'a>>,
    pub rules: Vec<RuleResult<'a>>,
    pub snippet: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;

fn err<E: std::fmt::Debug>(e: E) -> std::io::Error {
    std::io::Error::other(format!("drawing: {e:?}"))
}

/// Least-squares slope of the points in each trailing window, per `per_ms`.
pub fn trailing_slope(points: &[(Ts, f64)], window_ms: Ts, per_ms: Ts) -> Vec<(Ts, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut from = 0;
    for (i, &(t, _)) in points.iter().enumerate() {
        while points[from].0 < t - window_ms {
            from += 1;
        }
        let w = &points[from..=i];
        // A fit over less than half its window (at the start of the data) is mostly noise.
        if w.len() < 3 || t - w[0].0 < window_ms / 2 {
            continue;
        }
        let n = w.len() as f64;
        let t0 = w[0].0;
        let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
        for &(ti, y) in w {
            let x = (ti - t0) as f64 / per_ms as f64;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        let den = n * sxx - sx * sx;
        if den.abs() > f64::EPSILON {
            out.push((t, (n * sxy - sx * sy) / den));
        }
    }
    out
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

const WARNING: RGBColor = RGBColor(240, 160, 0);
const ALARM: RGBColor = RGBColor(210, 30, 30);

fn panel(
    area: &Area<'_>,
    f: &EffectFigure<'_>,
    title: &str,
    series: &[(f64, f64)],
    color: RGBColor,
    precursor_scale: bool,
) -> Result<(), std::io::Error> {
    let x0 = -(f.before_ms as f64) / 60_000.0;
    let x1 = f.after_ms as f64 / 60_000.0;
    let (lo, hi) = range(series.iter().map(|p| p.1));
    // The effect itself dwarfs its precursor: scale to the half hour before the onset and
    // clip what follows, so the rise that warnings react to is visible.
    let (lo, hi) = if precursor_scale && series.iter().any(|p| p.0 < 0.0) {
        let (a, b) = range(series.iter().filter(|p| p.0 < 0.0).map(|p| p.1));
        let pad = (b - a) * 0.25;
        ((a - pad).max(lo), (b + pad).min(hi))
    } else {
        (lo, hi)
    };
    let series: Vec<(f64, f64)> = series.iter().map(|&(x, y)| (x, y.clamp(lo, hi))).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 14))
        .margin(6)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("minutes from onset")
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    let minutes = |t: Ts| (t - f.effect.onset) as f64 / 60_000.0;
    for s in &f.spans {
        let a = minutes(s.start).max(x0);
        let b = s.end.map_or(x1, minutes).min(x1);
        if b <= a {
            continue;
        }
        let c = if s.start < f.effect.onset {
            WARNING
        } else {
            ALARM
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, lo), (b, hi)],
                c.mix(0.18).filled(),
            )))
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new(
            series.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(err)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, lo), (0.0, hi)],
            BLACK.stroke_width(1),
        )))
        .map_err(err)?;
    Ok(())
}

/// One anode effect: three panels on one time axis.
pub fn effect_svg(f: &EffectFigure<'_>) -> Result<String, std::io::Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let rel = |t: Ts| (t - f.effect.onset) as f64 / 60_000.0;
        let voltage: Vec<(f64, f64)> = f
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|p| (rel(p.0), p.1))
            .collect();
        let r: Vec<(Ts, f64)> = f
            .points
            .iter()
            .filter(|p| p.2.is_finite())
            .map(|p| (p.0, p.2))
            .collect();
        let slope: Vec<(f64, f64)> = trailing_slope(&r, f.slope_window_ms, f.slope_per_ms)
            .into_iter()
            .map(|(t, s)| (rel(t), s))
            .collect();
        let r: Vec<(f64, f64)> = r.into_iter().map(|(t, v)| (rel(t), v)).collect();
        let panels = root.split_evenly((3, 1));
        panel(&panels[0], f, "voltage (V)", &voltage, BLUE, false)?;
        panel(
            &panels[1],
            f,
            &format!("{} (µΩ; after the onset clipped)", f.resistance_tag),
            &r,
            GREEN,
            true,
        )?;
        let per = humantime::format_duration(std::time::Duration::from_millis(
            f.slope_per_ms.max(1) as u64,
        ));
        let window = humantime::format_duration(std::time::Duration::from_millis(
            f.slope_window_ms.max(1) as u64,
        ));
        panel(
            &panels[2],
            f,
            &format!(
                "slope of {} (µΩ per {per}, {window} least squares; after the onset clipped)",
                f.resistance_tag
            ),
            &slope,
            MAGENTA,
            true,
        )?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Detection against false warnings, one point per setting, a line per on-delay.
pub fn tradeoff_svg(r: &RuleResult<'_>) -> Result<String, std::io::Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let xmax = r
            .rows
            .iter()
            .map(|(_, s)| s.false_per_100_cell_hours)
            .fold(1.0f64, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: detection against false warnings", r.rule),
                ("sans-serif", 15),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..xmax, 0.0..105.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("false warnings per 100 cell-hours")
            .y_desc("anode effects detected (%)")
            .draw()
            .map_err(err)?;
        let mut delays: Vec<i64> = r.rows.iter().map(|(s, _)| s.on_delay_ms).collect();
        delays.sort_unstable();
        delays.dedup();
        for (i, d) in delays.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut pts: Vec<(f64, f64)> = r
                .rows
                .iter()
                .filter(|(s, _)| s.on_delay_ms == *d)
                .map(|(_, sc)| (sc.false_per_100_cell_hours, sc.detection() * 100.0))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(1)))
                .map_err(err)?
                .label(format!("on_delay {} s", d / 1000))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        let marks = r
            .rows
            .iter()
            .enumerate()
            .filter(|(i, (s, _))| s.current || Some(*i) == r.proposed);
        for (i, (s, sc)) in marks {
            let p = (sc.false_per_100_cell_hours, sc.detection() * 100.0);
            let (c, label) = if Some(i) == r.proposed {
                (ALARM, "proposed")
            } else {
                (BLACK, "current")
            };
            let _ = s;
            chart
                .draw_series(std::iter::once(Circle::new(p, 7, c.stroke_width(2))))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (p.0, (p.1 - 6.0).max(2.0)),
                    ("sans-serif", 12),
                )))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// The whole page.
pub fn html(r: &Report<'_>) -> Result<String, std::io::Error> {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str(&format!("<title>{}</title>\n", esc(&r.title)));
    h.push_str(
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1000px}\
         table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}\
         tr.proposed{background:#fde2e2}tr.current{font-weight:bold}figure{margin:1em 0}\
         .warning{color:#b07000}.alarm{color:#c01e1e}pre{background:#f4f4f4;padding:8px}</style>\n",
    );
    h.push_str("</head>\n<body>\n");
    h.push_str(&format!(
        "<h1>{}</h1>\n<table data-testid=\"summary\">\n",
        esc(&r.title)
    ));
    for (k, v) in &r.summary {
        h.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            esc(k),
            esc(v)
        ));
    }
    h.push_str("</table>\n");
    h.push_str(&format!(
        "<h2>Anode effects ({})</h2>\n<p>Shaded: <span class=\"warning\">warnings</span> (activations before the onset) and <span class=\"alarm\">alarms</span> (at or after it) of the configured rules on the cell; the black line is the onset from the controller's register.</p>\n",
        r.effects.len()
    ));
    for (i, f) in r.effects.iter().enumerate() {
        let rules: Vec<String> = f
            .spans
            .iter()
            .map(|s| {
                format!(
                    "{} {:+.0} s",
                    s.rule,
                    (s.start - f.effect.onset) as f64 / 1000.0
                )
            })
            .collect();
        h.push_str(&format!(
            "<figure data-testid=\"ae-figure\" id=\"ae-{}\">\n{}\n<figcaption>Anode effect {} on {} at {} (from {}); activations: {}</figcaption>\n</figure>\n",
            i + 1,
            effect_svg(f)?,
            i + 1,
            esc(f.device),
            crate::clock::rfc3339_ms(f.effect.onset),
            f.effect.source,
            esc(&if rules.is_empty() { "none".to_string() } else { rules.join(", ") }),
        ));
    }
    h.push_str("<h2>Swept rules</h2>\n");
    for rr in &r.rules {
        h.push_str(&format!(
            "<h3 id=\"rule-{}\">{}</h3>\n<p>{}</p>\n<figure data-testid=\"tradeoff-figure\">\n{}\n</figure>\n",
            esc(rr.rule),
            esc(rr.rule),
            esc(&rr.description),
            tradeoff_svg(rr)?
        ));
        h.push_str("<table><tr><th>limit</th><th>on_delay s</th><th>detected</th><th>median lead s</th><th>false / 100 cell-h</th></tr>\n");
        for (i, (s, sc)) in rr.rows.iter().enumerate() {
            let class = if Some(i) == rr.proposed {
                " class=\"proposed\""
            } else if s.current {
                " class=\"current\""
            } else {
                ""
            };
            h.push_str(&format!(
                "<tr{class}><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{:.2}</td></tr>\n",
                s.limit,
                s.on_delay_ms / 1000,
                sc.detected,
                sc.effects,
                fmt_opt(sc.median_lead_s),
                sc.false_per_100_cell_hours
            ));
        }
        h.push_str("</table>\n");
    }
    h.push_str(&format!(
        "<h2>Proposed limits</h2>\n<pre data-testid=\"proposal\">{}</pre>\n</body>\n</html>\n",
        esc(&r.snippet)
    ));
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_slope_of_a_line_is_its_gradient() {
        let pts: Vec<(Ts, f64)> = (0..600)
            .map(|s| (s * 1000, 5.0 + 0.002 * s as f64))
            .collect();
        let s = trailing_slope(&pts, 300_000, 60_000);
        assert!(
            s.iter().all(|(_, v)| (v - 0.12).abs() < 1e-9),
            "{:?}",
            &s[..3]
        );
    }
}
