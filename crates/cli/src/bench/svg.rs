//! SVG plots of pause distributions for `vmprim bench gc`, written without
//! dependencies.
//!
//! A plot shows one empirical CDF per series: for each pause time x, the
//! fraction of the series' pauses that took at most x.
//!
//! ```text
//!  1 ┤            ┌──────────  ── name   legend: name,
//!    │        ┌───┘                n = 123, max 4.56 ms
//!  0 ┼────────┘
//!    1 µs    10 µs    100 µs     (log10 axis, one tick a decade)
//! ```

use std::fmt::{self, Write};

/// Size of the whole picture, and the plot area inside it (SVG units: y
/// grows downwards).
const WIDTH: f64 = 780.0;
const MIN_HEIGHT: f64 = 440.0;
const PLOT_LEFT: f64 = 70.0;
const PLOT_RIGHT: f64 = 540.0;
const PLOT_TOP: f64 = 50.0;
const PLOT_BOTTOM: f64 = 380.0;
/// Where the legend starts, and the height of one entry.
const LEGEND_LEFT: f64 = PLOT_RIGHT + 25.0;
const LEGEND_STEP: f64 = 40.0;
/// Points of a curve closer than this horizontally are merged.
const MERGE_DX: f64 = 0.1;

/// Series colours, in order, repeated beyond eight series.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A self-contained SVG document plotting, for each named series of pause
/// times in microseconds, its empirical CDF: x is the pause on a log10 axis
/// (decade ticks), y the fraction of pauses at most x. Each series gets a
/// coloured curve and a legend entry with its name, count and maximum, or
/// "no pauses" when empty. Non-finite values are ignored; values at or
/// below 0 are drawn at the left edge.
pub fn pause_plot(title: &str, series: &[(&str, &[f64])]) -> String {
    let series: Vec<(&str, Vec<f64>)> = series
        .iter()
        .map(|(name, pauses)| (*name, sorted_finite(pauses)))
        .collect();
    let axis = LogAxis::fit(series.iter().flat_map(|(_, v)| v.iter().copied()));
    let mut svg = String::new();
    render(&mut svg, title, &series, &axis).expect("formatting into a String does not fail");
    svg
}

fn sorted_finite(pauses: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = pauses.iter().copied().filter(|p| p.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn render(
    svg: &mut String,
    title: &str,
    series: &[(&str, Vec<f64>)],
    axis: &LogAxis,
) -> fmt::Result {
    let legend_bottom = PLOT_TOP + LEGEND_STEP * series.len() as f64 + 10.0;
    let height = MIN_HEIGHT.max(legend_bottom);
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    )?;
    let title = escape(title);
    writeln!(svg, "<title>{title}</title>")?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="15">{title}</text>"#,
        WIDTH / 2.0
    )?;
    x_axis(svg, axis)?;
    y_axis(svg)?;
    for (i, (name, pauses)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        curve(svg, axis, pauses, colour)?;
        legend_entry(svg, i, name, pauses, colour)?;
    }
    writeln!(svg, "</svg>")
}

/// The horizontal axis: a log10 scale over whole decades, in microseconds.
#[derive(Debug, PartialEq)]
struct LogAxis {
    /// The left edge is 10^lo µs, the right edge 10^hi µs; lo < hi.
    lo: i32,
    hi: i32,
}

impl LogAxis {
    /// The decades that cover every positive value; 1 µs to 1 ms if none.
    fn fit(values: impl Iterator<Item = f64>) -> Self {
        let (min, max) = values
            .filter(|v| *v > 0.0)
            .fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if max == 0.0 {
            return LogAxis { lo: 0, hi: 3 };
        }
        // The slack keeps exact powers of ten on their own decade.
        let lo = (min.log10() + 1e-9).floor() as i32;
        let hi = (max.log10() - 1e-9).ceil() as i32;
        LogAxis {
            lo,
            hi: hi.max(lo + 1),
        }
    }

    /// The SVG x of `us` microseconds, clamped to the plot.
    fn x(&self, us: f64) -> f64 {
        let decades = if us > 0.0 {
            us.log10()
        } else {
            f64::NEG_INFINITY
        };
        let t = ((decades - f64::from(self.lo)) / f64::from(self.hi - self.lo)).clamp(0.0, 1.0);
        PLOT_LEFT + t * (PLOT_RIGHT - PLOT_LEFT)
    }
}

/// The SVG y of a cumulative fraction in 0..=1.
fn y(fraction: f64) -> f64 {
    PLOT_BOTTOM - fraction * (PLOT_BOTTOM - PLOT_TOP)
}

/// Decade ticks with labels and grid lines, minor ticks at 2..9, the title.
fn x_axis(svg: &mut String, axis: &LogAxis) -> fmt::Result {
    writeln!(svg, r##"<g stroke="#ccc">"##)?;
    for e in axis.lo..=axis.hi {
        let x = axis.x(10f64.powi(e));
        writeln!(
            svg,
            r#"<line x1="{x:.2}" y1="{PLOT_TOP}" x2="{x:.2}" y2="{PLOT_BOTTOM}"/>"#
        )?;
    }
    writeln!(svg, "</g>")?;
    writeln!(svg, r##"<g stroke="#333">"##)?;
    for e in axis.lo..axis.hi {
        for m in 2..=9 {
            let x = axis.x(f64::from(m) * 10f64.powi(e));
            let y2 = PLOT_BOTTOM + 3.0;
            writeln!(
                svg,
                r#"<line x1="{x:.2}" y1="{PLOT_BOTTOM}" x2="{x:.2}" y2="{y2}"/>"#
            )?;
        }
    }
    for e in axis.lo..=axis.hi {
        let x = axis.x(10f64.powi(e));
        let y2 = PLOT_BOTTOM + 6.0;
        writeln!(
            svg,
            r#"<line x1="{x:.2}" y1="{PLOT_BOTTOM}" x2="{x:.2}" y2="{y2}"/>"#
        )?;
    }
    writeln!(svg, "</g>")?;
    writeln!(svg, r#"<g text-anchor="middle">"#)?;
    for e in axis.lo..=axis.hi {
        let x = axis.x(10f64.powi(e));
        let label = decade_label(e);
        writeln!(
            svg,
            r#"<text x="{x:.2}" y="{}">{label}</text>"#,
            PLOT_BOTTOM + 20.0
        )?;
    }
    writeln!(
        svg,
        r#"<text x="{}" y="{}">pause (log scale)</text>"#,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        PLOT_BOTTOM + 45.0
    )?;
    writeln!(svg, "</g>")
}

/// Ticks at every quarter with labels and grid lines, the frame, the title.
fn y_axis(svg: &mut String) -> fmt::Result {
    const QUARTERS: [(f64, &str); 5] = [
        (0.0, "0"),
        (0.25, "0.25"),
        (0.5, "0.5"),
        (0.75, "0.75"),
        (1.0, "1"),
    ];
    writeln!(svg, r##"<g stroke="#ccc">"##)?;
    for (f, _) in QUARTERS {
        let y = y(f);
        writeln!(
            svg,
            r#"<line x1="{PLOT_LEFT}" y1="{y}" x2="{PLOT_RIGHT}" y2="{y}"/>"#
        )?;
    }
    writeln!(svg, "</g>")?;
    writeln!(svg, r#"<g text-anchor="end">"#)?;
    for (f, label) in QUARTERS {
        writeln!(
            svg,
            r#"<text x="{}" y="{}">{label}</text>"#,
            PLOT_LEFT - 8.0,
            y(f) + 4.0
        )?;
    }
    writeln!(svg, "</g>")?;
    let (w, h) = (PLOT_RIGHT - PLOT_LEFT, PLOT_BOTTOM - PLOT_TOP);
    writeln!(
        svg,
        r##"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{w}" height="{h}" fill="none" stroke="#333"/>"##
    )?;
    let (cx, cy) = (PLOT_LEFT - 48.0, (PLOT_TOP + PLOT_BOTTOM) / 2.0);
    writeln!(
        svg,
        r#"<text x="{cx}" y="{cy}" text-anchor="middle" transform="rotate(-90 {cx} {cy})">fraction of pauses ≤ x</text>"#
    )
}

/// The empirical CDF of `sorted` as a step polyline; nothing when empty.
fn curve(svg: &mut String, axis: &LogAxis, sorted: &[f64], colour: &str) -> fmt::Result {
    let points = cdf_points(axis, sorted);
    if points.is_empty() {
        return Ok(());
    }
    write!(
        svg,
        r#"<polyline class="ecdf" fill="none" stroke="{colour}" stroke-width="1.8" points=""#
    )?;
    for (i, (x, y)) in points.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        write!(svg, "{sep}{x:.2},{y:.2}")?;
    }
    writeln!(svg, r#""/>"#)
}

/// The corners of the CDF's steps, from fraction 0 to 1 and on to the right
/// edge. Pauses whose x lie within `MERGE_DX` of each other form one step,
/// so the size follows the plot's width, not the number of pauses.
fn cdf_points(axis: &LogAxis, sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    let mut points = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let x = axis.x(sorted[i]);
        let mut j = i + 1;
        while j < sorted.len() && axis.x(sorted[j]) - x < MERGE_DX {
            j += 1;
        }
        points.push((x, y(i as f64 / n)));
        points.push((x, y(j as f64 / n)));
        i = j;
    }
    if !points.is_empty() {
        points.push((PLOT_RIGHT, y(1.0)));
    }
    points
}

/// Entry `i` of the legend: a swatch, the name, and the count and maximum.
fn legend_entry(
    svg: &mut String,
    i: usize,
    name: &str,
    sorted: &[f64],
    colour: &str,
) -> fmt::Result {
    let top = PLOT_TOP + 10.0 + LEGEND_STEP * i as f64;
    let (x1, x2, tx) = (LEGEND_LEFT, LEGEND_LEFT + 22.0, LEGEND_LEFT + 30.0);
    writeln!(
        svg,
        r#"<line x1="{x1}" y1="{top}" x2="{x2}" y2="{top}" stroke="{colour}" stroke-width="3"/>"#
    )?;
    writeln!(
        svg,
        r#"<text x="{tx}" y="{}">{}</text>"#,
        top + 4.0,
        escape(name)
    )?;
    let summary = match sorted.last() {
        None => "no pauses".to_string(),
        Some(max) => format!("n = {}, max {}", sorted.len(), duration(*max)),
    };
    writeln!(
        svg,
        r##"<text x="{tx}" y="{}" font-size="11" fill="#555">{summary}</text>"##,
        top + 19.0
    )
}

/// The label of the tick at 10^e µs, in µs, ms or s: "0.1 µs", "10 ms".
fn decade_label(e: i32) -> String {
    let (unit, shift) = match e {
        ..=2 => ("µs", 0),
        3..=5 => ("ms", 3),
        _ => ("s", 6),
    };
    let k = e - shift;
    let digits = match usize::try_from(k) {
        Ok(zeros) => format!("1{}", "0".repeat(zeros)),
        Err(_) => format!("0.{}1", "0".repeat(k.unsigned_abs() as usize - 1)),
    };
    format!("{digits} {unit}")
}

/// A duration given in µs, in the unit that suits it.
fn duration(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `s` with XML's special characters escaped, for text and attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every tag is closed in order; panics with the culprit.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>').expect("unterminated tag");
            assert!(!rest[..start].contains('>'), "'>' in text");
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(closing) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(closing), "closing tag out of order");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().expect("empty tag"));
            }
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
        assert!(!rest.contains('>'), "'>' in text");
    }

    /// The points of every curve, in order.
    fn curves(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.lines()
            .filter(|l| l.starts_with(r#"<polyline class="ecdf""#))
            .map(|l| {
                let pts = l.split(r#"points=""#).nth(1).unwrap();
                pts.trim_end_matches(r#""/>"#)
                    .split(' ')
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_document_is_well_formed() {
        let a = [3.0, 40.0, 41.0, 900.0, 12_000.0];
        let b = [0.5, 2.0];
        let svg = pause_plot("gcbench", &[("vm", &a), ("boehm", &b), ("none", &[])]);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("</svg>").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        for name in ["vm", "boehm", "none", "gcbench"] {
            assert!(svg.contains(&format!(">{name}<")), "{name}");
        }
    }

    #[test]
    fn names_and_title_are_escaped() {
        let svg = pause_plot("a <b> & 'c'", &[("x<y \"z\"", &[1.0])]);
        assert_well_formed(&svg);
        assert!(svg.contains("x&lt;y &quot;z&quot;"));
        assert!(svg.contains("a &lt;b&gt; &amp; &apos;c&apos;"));
        assert!(!svg.contains("x<y"));
    }

    #[test]
    fn each_curve_rises_from_0_to_1_left_to_right() {
        let a: Vec<f64> = (0..1000)
            .map(|i| f64::from((i * 7919) % 5000 + 1))
            .collect();
        let b = [10.0, 10.0, 20.0, 5.0];
        let svg = pause_plot("t", &[("a", &a), ("b", &b)]);
        let curves = curves(&svg);
        assert_eq!(curves.len(), 2);
        for c in curves {
            for w in c.windows(2) {
                assert!(w[1].0 >= w[0].0, "x goes back: {w:?}");
                assert!(w[1].1 <= w[0].1, "y goes down the fractions: {w:?}");
            }
            assert_eq!(c.first().unwrap().1, y(0.0));
            assert_eq!(c.last().unwrap(), &(PLOT_RIGHT, y(1.0)));
        }
    }

    #[test]
    fn steps_reach_the_right_fractions() {
        // 5 µs, 10 µs twice, 20 µs: the CDF is 1/4 at 5, 3/4 at 10, 1 at 20.
        let svg = pause_plot("t", &[("b", &[10.0, 20.0, 5.0, 10.0])]);
        let c = &curves(&svg)[0];
        let axis = LogAxis { lo: 0, hi: 2 };
        let at = |us: f64| -> Vec<f64> {
            let x = (axis.x(us) * 100.0).round() / 100.0;
            c.iter().filter(|p| p.0 == x).map(|p| p.1).collect()
        };
        let r = |f: f64| (y(f) * 100.0).round() / 100.0;
        assert_eq!(at(5.0), [r(0.0), r(0.25)]);
        assert_eq!(at(10.0), [r(0.25), r(0.75)]);
        assert_eq!(at(20.0), [r(0.75), r(1.0)]);
    }

    #[test]
    fn an_empty_series_says_so_and_draws_nothing() {
        let svg = pause_plot("t", &[("idle", &[]), ("busy", &[1.0, 2.0])]);
        assert_well_formed(&svg);
        assert!(svg.contains("no pauses"));
        assert_eq!(curves(&svg).len(), 1);
        let svg = pause_plot("t", &[]);
        assert_well_formed(&svg);
        assert!(
            svg.contains(">1 µs<") && svg.contains(">1 ms<"),
            "default axis"
        );
    }

    #[test]
    fn a_single_value_gets_a_decade_and_a_step() {
        let svg = pause_plot("t", &[("one", &[42.0])]);
        assert_well_formed(&svg);
        assert_eq!(LogAxis::fit([42.0].into_iter()), LogAxis { lo: 1, hi: 2 });
        assert!(svg.contains(">10 µs<") && svg.contains(">100 µs<"));
        assert!(svg.contains("n = 1, max 42.0 µs"));
        let c = &curves(&svg)[0];
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].0, c[1].0);
        // A power of ten alone still gets a whole decade.
        assert_eq!(LogAxis::fit([100.0].into_iter()), LogAxis { lo: 2, hi: 3 });
    }

    #[test]
    fn decades_cover_the_data_with_labels() {
        let svg = pause_plot("t", &[("a", &[5.0, 5000.0])]);
        assert_eq!(
            LogAxis::fit([5.0, 5000.0].into_iter()),
            LogAxis { lo: 0, hi: 4 }
        );
        for label in ["1 µs", "10 µs", "100 µs", "1 ms", "10 ms"] {
            assert!(svg.contains(&format!(">{label}<")), "{label}");
        }
        assert!(!svg.contains(">100 ms<"));
        assert!(svg.contains("max 5.00 ms"));
        let labels: Vec<String> = [-2, -1, 0, 2, 3, 5, 6, 7].map(decade_label).to_vec();
        assert_eq!(
            labels,
            ["0.01 µs", "0.1 µs", "1 µs", "100 µs", "1 ms", "100 ms", "1 s", "10 s"]
        );
    }

    #[test]
    fn odd_values_stay_on_the_plot() {
        let svg = pause_plot("t", &[("odd", &[0.0, -1.0, f64::NAN, f64::INFINITY, 3.0])]);
        assert_well_formed(&svg);
        assert!(svg.contains("n = 3, max 3.0 µs"));
        for (x, y) in curves(&svg).concat() {
            assert!((PLOT_LEFT..=PLOT_RIGHT).contains(&x), "{x}");
            assert!((PLOT_TOP..=PLOT_BOTTOM).contains(&y), "{y}");
        }
    }

    #[test]
    fn many_pauses_make_a_bounded_curve() {
        let many: Vec<f64> = (1..=200_000).map(|i| f64::from(i) / 10.0).collect();
        let svg = pause_plot("t", &[("many", &many)]);
        let points = curves(&svg)[0].len();
        let bound = 2.0 * (PLOT_RIGHT - PLOT_LEFT) / MERGE_DX + 1.0;
        assert!((points as f64) <= bound, "{points} points");
        assert!(svg.contains("n = 200000, max 20.00 ms"));
    }

    #[test]
    fn the_legend_grows_with_the_series() {
        let v = [1.0];
        let series: Vec<(&str, &[f64])> = (0..12).map(|_| ("s", &v[..])).collect();
        let svg = pause_plot("t", &series);
        assert_well_formed(&svg);
        let height = PLOT_TOP + LEGEND_STEP * 12.0 + 10.0;
        assert!(svg.contains(&format!(r#"height="{height}""#)));
    }
}
