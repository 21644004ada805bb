//! Ways to look at a series: an ASCII sparkline for the terminal, CSV for any plotting tool, and
//! a self-contained SVG chart (written by hand: no plotting crate, no fonts needed — the viewer
//! renders the text).

use std::fmt::Write as _;

use super::load::SeriesPoint;

const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `values` squeezed into at most `width` columns (each the maximum of its bucket) and drawn
/// with block characters scaled to `max(values)`.
pub fn sparkline(values: &[u64], width: usize) -> String {
    let buckets = bucket_max(values, width);
    let top = buckets.iter().copied().max().unwrap_or(0);
    buckets
        .iter()
        .map(|&v| {
            if top == 0 {
                BLOCKS[0]
            } else {
                BLOCKS[((v as u128 * 7).div_ceil(top as u128)) as usize]
            }
        })
        .collect()
}

/// The column (of a [`sparkline`] of `len` values in `width` columns) where value `index` lands.
pub fn column_of(index: usize, len: usize, width: usize) -> usize {
    let cols = len.min(width).max(1);
    (index.min(len.saturating_sub(1)) * cols)
        .checked_div(len)
        .unwrap_or(0)
}

fn bucket_max(values: &[u64], width: usize) -> Vec<u64> {
    let width = width.max(1);
    if values.len() <= width {
        return values.to_vec();
    }
    let mut out = vec![0u64; width];
    for (i, &v) in values.iter().enumerate() {
        let c = i * width / values.len();
        out[c] = out[c].max(v);
    }
    out
}

/// The series as CSV, one row per sample, with a header.
pub fn series_csv(series: &[SeriesPoint]) -> String {
    let mut s = String::from(
        "t_ms,phase,depth,parked,offered_per_s,confirmed_per_s,refused_per_s,delivered_per_s,broker_rejected,broker_dropped,confirmed_total,delivered_total\n",
    );
    for p in series {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.1},{:.1},{:.1},{:.1},{},{},{},{}",
            p.t_ms,
            p.phase,
            p.depth,
            p.parked,
            p.offered_per_s,
            p.confirmed_per_s,
            p.refused_per_s,
            p.delivered_per_s,
            p.broker_rejected,
            p.broker_dropped,
            p.confirmed_total,
            p.delivered_total
        );
    }
    s
}

/// A line of the rates panel: its name, colour, and value per point.
type Line = (&'static str, &'static str, fn(&SeriesPoint) -> f64);

/// A shaded span of the time axis, with a label (e.g. the burst).
pub struct Span {
    pub from_ms: u64,
    pub to_ms: u64,
    pub label: String,
}

/// Two stacked panels over time: the topic's depth (with the bound as a dashed line), and the
/// offered / confirmed / refused / delivered rates; `spans` shaded in both.
pub fn series_svg(series: &[SeriesPoint], title: &str, bound: u64, spans: &[Span]) -> String {
    const W: f64 = 900.0;
    const PANEL_H: f64 = 220.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const GAP: f64 = 50.0;
    let h = TOP + 2.0 * PANEL_H + GAP + 50.0;
    let t_max = series.iter().map(|p| p.t_ms).max().unwrap_or(1).max(1) as f64;
    let x = |t: u64| LEFT + (W - LEFT - RIGHT) * t as f64 / t_max;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    );

    let depth_max = series
        .iter()
        .map(|p| p.depth)
        .max()
        .unwrap_or(0)
        .max(bound)
        .max(1) as f64;
    let rate_max = series
        .iter()
        .map(|p| {
            p.offered_per_s
                .max(p.confirmed_per_s)
                .max(p.refused_per_s)
                .max(p.delivered_per_s)
        })
        .fold(1.0f64, f64::max);

    let panels: [(f64, &str, f64); 2] = [
        (TOP, "depth (messages)", depth_max),
        (TOP + PANEL_H + GAP, "rate (msg/s)", rate_max),
    ];
    for (top, label, max) in panels {
        let bottom = top + PANEL_H;
        for span in spans {
            let (a, b) = (x(span.from_ms), x(span.to_ms.min(t_max as u64)));
            let _ = writeln!(
                s,
                r##"<rect x="{a:.1}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#f4e1c1"/>"##,
                (b - a).max(0.0)
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#8a5a00">{}</text>"##,
                (a + b) / 2.0,
                top + 14.0,
                escape(&span.label)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_H}" fill="none" stroke="#444"/>"##,
            W - LEFT - RIGHT
        );
        for i in 0..=4 {
            let v = max * f64::from(i) / 4.0;
            let y = bottom - PANEL_H * f64::from(i) / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                short(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{label}</text>"#,
            top + PANEL_H / 2.0,
            top + PANEL_H / 2.0
        );
        let y = |v: f64| bottom - PANEL_H * (v / max).min(1.0);
        if label.starts_with("depth") {
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#c00" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#c00">bound {bound}</text>"##,
                W - RIGHT,
                y(bound as f64),
                y(bound as f64),
                W - RIGHT - 4.0,
                y(bound as f64) - 4.0
            );
            polyline(&mut s, series, &x, &|p| y(p.depth as f64), "#1f5fbf");
        } else {
            let lines: [Line; 4] = [
                ("offered", "#7a7a7a", |p| p.offered_per_s),
                ("confirmed", "#1f8f3a", |p| p.confirmed_per_s),
                ("refused", "#c00000", |p| p.refused_per_s),
                ("delivered", "#1f5fbf", |p| p.delivered_per_s),
            ];
            for (i, (name, color, f)) in lines.iter().enumerate() {
                polyline(&mut s, series, &x, &|p| y(f(p)), color);
                let lx = LEFT + 10.0 + 110.0 * i as f64;
                let _ = writeln!(
                    s,
                    r#"<line x1="{lx}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{}" y="{:.1}">{name}</text>"#,
                    lx + 20.0,
                    bottom + 30.0,
                    bottom + 30.0,
                    lx + 25.0,
                    bottom + 34.0
                );
            }
        }
    }
    let axis_y = TOP + 2.0 * PANEL_H + GAP;
    for i in 0..=10 {
        let t = (t_max * f64::from(i) / 10.0) as u64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0} s</text>"#,
            x(t),
            axis_y + 14.0,
            t as f64 / 1000.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn polyline(
    s: &mut String,
    series: &[SeriesPoint],
    x: &dyn Fn(u64) -> f64,
    y: &dyn Fn(&SeriesPoint) -> f64,
    color: &str,
) {
    let points: Vec<String> = series
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.t_ms), y(p)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
        points.join(" ")
    );
}

/// 12 345 → "12.3k", 2 000 000 → "2.0M".
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_ms: u64, depth: u64) -> SeriesPoint {
        SeriesPoint {
            t_ms,
            phase: "before",
            depth,
            parked: 0,
            broker_rejected: 0,
            broker_dropped: 0,
            offered_per_s: 1000.0,
            confirmed_per_s: 990.5,
            refused_per_s: 0.0,
            delivered_per_s: 1000.0,
            confirmed_total: 0,
            delivered_total: 0,
        }
    }

    #[test]
    fn sparkline_scales_and_squeezes() {
        assert_eq!(sparkline(&[0, 0, 0], 10), "▁▁▁");
        assert_eq!(sparkline(&[0, 50, 100], 10), "▁▅█");
        // Six values in three columns: each column is the max of two.
        assert_eq!(sparkline(&[0, 100, 0, 0, 10, 0], 3), "█▁▂");
        assert_eq!(sparkline(&[], 10), "");
        assert_eq!(column_of(3, 6, 3), 1);
        assert_eq!(column_of(2, 3, 10), 2);
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_point() {
        let csv = series_csv(&[point(0, 5), point(250, 7)]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("t_ms,phase,depth"));
        assert_eq!(lines[2], "250,before,7,0,1000.0,990.5,0.0,1000.0,0,0,0,0");
    }

    #[test]
    fn svg_is_one_document_with_both_panels() {
        let spans = [Span {
            from_ms: 100,
            to_ms: 200,
            label: "2× <burst>".into(),
        }];
        let svg = series_svg(&[point(0, 5), point(250, 7)], "t & t", 10, &spans);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert!(svg.contains("2× &lt;burst&gt;") && svg.contains("t &amp; t"));
    }
}
