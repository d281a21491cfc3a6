//! Line charts as inline SVG, rendered on the server: no script, no external asset. The x axis
//! is a fixed time window ending now (so an idle gateway shows an empty stretch, not a stretched
//! line); the y axis starts at 0 and ends at a "nice" round value above the largest point.

use std::fmt::Write as _;

use super::html::{escape, utc_time};

/// One line of a chart.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) name: &'static str,
    /// A CSS colour (a literal of the console, never data).
    pub(crate) color: &'static str,
    /// (unix ms, value); `None` values break the line (no data then).
    pub(crate) points: Vec<(i64, Option<f64>)>,
}

/// What a chart shows.
#[derive(Debug, Clone)]
pub(crate) struct Chart<'a> {
    /// `id` attribute of the `<svg>` (tests and the browser check find charts by it).
    pub(crate) id: &'static str,
    pub(crate) title: &'a str,
    /// The y axis unit, e.g. `calls/s`.
    pub(crate) unit: &'static str,
    /// The window shown: `[end_ms - window_ms, end_ms]`.
    pub(crate) end_ms: i64,
    pub(crate) window_ms: i64,
    pub(crate) series: Vec<Series>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 28.0;
/// Horizontal grid lines (y ticks) above 0.
const Y_TICKS: u32 = 4;

/// The smallest value of the form {1, 2, 2.5, 5} × 10^k that is ≥ `max`, so that the y axis
/// ends on a round number; 1 for an empty or all-zero chart.
pub(crate) fn nice_ceiling(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        let candidate = step * magnitude;
        // Tolerate floating-point noise: 0.3 / 0.1 must not round up to the next step.
        if candidate >= max * (1.0 - 1e-9) {
            return candidate;
        }
    }
    10.0 * magnitude
}

/// Maps data to pixels inside the plot area.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scale {
    start_ms: i64,
    window_ms: i64,
    y_max: f64,
}

impl Scale {
    pub(crate) fn new(end_ms: i64, window_ms: i64, y_max: f64) -> Self {
        Self {
            start_ms: end_ms - window_ms.max(1),
            window_ms: window_ms.max(1),
            y_max: nice_ceiling(y_max),
        }
    }

    pub(crate) fn y_max(&self) -> f64 {
        self.y_max
    }

    /// The pixel of a time, clamped to the plot area.
    pub(crate) fn x(&self, ms: i64) -> f64 {
        let fraction = ((ms - self.start_ms) as f64 / self.window_ms as f64).clamp(0.0, 1.0);
        LEFT + fraction * (WIDTH - LEFT - RIGHT)
    }

    /// The pixel of a value (SVG's y grows downwards), clamped to the plot area.
    pub(crate) fn y(&self, value: f64) -> f64 {
        let fraction = (value / self.y_max).clamp(0.0, 1.0);
        HEIGHT - BOTTOM - fraction * (HEIGHT - TOP - BOTTOM)
    }
}

/// A y-axis label: few digits, no trailing zeros.
pub(crate) fn label(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let text = if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The chart as an `<svg>` element.
pub(crate) fn render(chart: &Chart<'_>) -> String {
    let max = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|(_, v)| *v))
        .fold(0.0_f64, f64::max);
    let scale = Scale::new(chart.end_ms, chart.window_ms, max);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"{}\" class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        chart.id,
        escape(chart.title)
    );
    let _ = write!(
        svg,
        "<text class=\"chart-title\" x=\"{LEFT}\" y=\"16\">{} ({})</text>",
        escape(chart.title),
        chart.unit
    );
    for i in 0..=Y_TICKS {
        let value = scale.y_max() * f64::from(i) / f64::from(Y_TICKS);
        let y = scale.y(value);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            label(value)
        );
    }
    for (ms, anchor) in [
        (chart.end_ms - chart.window_ms, "start"),
        (chart.end_ms, "end"),
    ] {
        let _ = write!(
            svg,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{} UTC</text>",
            scale.x(ms),
            HEIGHT - 8.0,
            utc_time(ms)
        );
    }
    let mut legend_x = WIDTH - RIGHT;
    for series in chart.series.iter().rev() {
        legend_x -= 26.0 + 7.0 * series.name.len() as f64;
        let _ = write!(
            svg,
            "<text class=\"legend\" x=\"{legend_x:.1}\" y=\"16\" fill=\"{}\">■ {}</text>",
            series.color,
            escape(series.name)
        );
    }
    for series in &chart.series {
        for run in runs(&series.points) {
            let points: Vec<String> = run
                .iter()
                .map(|(ms, v)| format!("{:.1},{:.1}", scale.x(*ms), scale.y(*v)))
                .collect();
            if points.len() == 1 {
                let (ms, v) = run[0];
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{}\"/>",
                    scale.x(ms),
                    scale.y(v),
                    series.color
                );
            } else {
                let _ = write!(
                    svg,
                    "<polyline class=\"line\" fill=\"none\" stroke=\"{}\" points=\"{}\"/>",
                    series.color,
                    points.join(" ")
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The stretches of consecutive points with a value.
fn runs(points: &[(i64, Option<f64>)]) -> Vec<Vec<(i64, f64)>> {
    let mut runs = vec![];
    let mut current = vec![];
    for (ms, value) in points {
        match value {
            Some(v) if v.is_finite() => current.push((*ms, *v)),
            _ if !current.is_empty() => runs.push(std::mem::take(&mut current)),
            _ => {}
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_y_axis_ends_on_a_round_value_above_the_data() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(-3.0), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.1), 2.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(nice_ceiling(0.1 + 0.2), 0.5);
        assert_eq!(nice_ceiling(1234.0), 2000.0);
        assert!((nice_ceiling(0.013) - 0.02).abs() < 1e-12);
        assert_eq!(nice_ceiling(10.0), 10.0);
    }

    #[test]
    fn points_map_into_the_plot_area() {
        let scale = Scale::new(10_000, 10_000, 7.0);
        assert_eq!(scale.y_max(), 10.0);
        assert_eq!(scale.x(0), LEFT);
        assert_eq!(scale.x(10_000), WIDTH - RIGHT);
        assert_eq!(scale.x(5_000), LEFT + (WIDTH - LEFT - RIGHT) / 2.0);
        // Outside the window: clamped to its edges.
        assert_eq!(scale.x(-50_000), LEFT);
        assert_eq!(scale.x(99_000), WIDTH - RIGHT);
        assert_eq!(scale.y(0.0), HEIGHT - BOTTOM);
        assert_eq!(scale.y(10.0), TOP);
        assert_eq!(scale.y(5.0), TOP + (HEIGHT - TOP - BOTTOM) / 2.0);
        assert_eq!(scale.y(1e9), TOP);
        assert_eq!(label(0.0), "0");
        assert_eq!(label(2.5), "2.5");
        assert_eq!(label(1500.0), "1500");
        assert_eq!(label(0.0125), "0.0125");
    }

    #[test]
    fn renders_lines_broken_where_data_is_missing() {
        let chart = Chart {
            id: "calls",
            title: "Calls <all>",
            unit: "calls/s",
            end_ms: 60_000,
            window_ms: 60_000,
            series: vec![Series {
                name: "ok",
                color: "#2a7",
                points: vec![
                    (0, Some(1.0)),
                    (10_000, Some(4.0)),
                    (20_000, None),
                    (30_000, Some(2.0)),
                    (40_000, None),
                    (50_000, Some(3.0)),
                    (60_000, Some(3.0)),
                ],
            }],
        };
        let svg = render(&chart);
        assert!(svg.starts_with("<svg id=\"calls\""), "{svg}");
        assert!(svg.contains("<title>Calls &lt;all&gt;</title>"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        // y max 5 (nice ceiling of 4): the 4 at x=10 s is 4/5 up the plot area.
        let scale = Scale::new(60_000, 60_000, 4.0);
        let point = format!("{:.1},{:.1}", scale.x(10_000), scale.y(4.0));
        assert!(svg.contains(&point), "{point} in {svg}");
        assert!(svg.contains(">5</text>"), "{svg}");
        assert!(svg.contains("00:00:00 UTC") && svg.contains("00:01:00 UTC"));
        assert!(svg.ends_with("</svg>"));
    }
}
