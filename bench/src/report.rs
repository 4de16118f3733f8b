//! Figures of a run: percentiles, the results file, the Markdown table and the latency
//! chart.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

/// One measured figure, with the baseline it is compared with where there is one.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// The baseline's value, in the same unit as `value`.
    pub baseline: Option<f64>,
    /// The quotient `value / baseline`.
    pub ratio: Option<f64>,
    /// The name of the baseline figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_name: Option<String>,
    /// The goal this figure is held to, such as `ratio >= 0.4` or `value <= 50`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// A goal for a figure's value or ratio.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum Target {
    RatioAtLeast { bound: f64 },
    ValueAtLeast { bound: f64 },
    ValueAtMost { bound: f64 },
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::RatioAtLeast { bound } => format!("ratio ≥ {bound}"),
            Target::ValueAtLeast { bound } => format!("≥ {}", format_value(bound)),
            Target::ValueAtMost { bound } => format!("≤ {}", format_value(bound)),
        }
    }
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            baseline_name: None,
            target: None,
            met: None,
        }
    }

    /// Compares the figure with `baseline`, a figure in the same unit.
    pub fn against(mut self, baseline: &Figure) -> Self {
        self.baseline = Some(baseline.value);
        self.baseline_name = Some(baseline.name.clone());
        self.ratio = (baseline.value > 0.0).then(|| self.value / baseline.value);
        self.met = self.evaluate();
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self.met = self.evaluate();
        self
    }

    fn evaluate(&self) -> Option<bool> {
        match self.target? {
            Target::RatioAtLeast { bound } => self.ratio.map(|ratio| ratio >= bound),
            Target::ValueAtLeast { bound } => Some(self.value >= bound),
            Target::ValueAtMost { bound } => Some(self.value <= bound),
        }
    }
}

/// Latency percentiles of a set of durations.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Computes the percentiles in milliseconds, by the nearest-rank method.
    pub fn of(durations: impl IntoIterator<Item = Duration>) -> Self {
        let mut millis: Vec<f64> = durations
            .into_iter()
            .map(|duration| duration.as_secs_f64() * 1e3)
            .collect();
        if millis.is_empty() {
            return Self::default();
        }
        millis.sort_by(f64::total_cmp);
        let rank = |quantile: f64| {
            let index = (quantile * millis.len() as f64).ceil() as usize;
            millis[index.clamp(1, millis.len()) - 1]
        };
        Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: millis[millis.len() - 1],
        }
    }

    /// Returns the four figures `<prefix>.p50` to `<prefix>.max`, in milliseconds.
    pub fn figures(&self, prefix: &str) -> Vec<Figure> {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("max", self.max),
        ]
        .into_iter()
        .map(|(name, value)| Figure::new(format!("{prefix}.{name}"), value, "ms"))
        .collect()
    }
}

fn format_value(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

pub fn write_json(path: &Path, figures: &[Figure]) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(figures)?;
    std::fs::write(path, json + "\n").with_context(|| format!("failed to write {}", path.display()))
}

/// Renders the figures as a Markdown table, after a heading and the lines of `context`.
pub fn markdown(figures: &[Figure], context: &[String]) -> String {
    let mut text = String::from("# Benchmark results\n\n");
    for line in context {
        let _ = writeln!(text, "- {line}");
    }
    text.push_str(
        "\n| figure | value | unit | baseline | ratio | target | met |\n|---|---:|---|---:|---:|---|---|\n",
    );
    for figure in figures {
        let baseline = match (&figure.baseline, &figure.baseline_name) {
            (Some(value), Some(name)) => format!("{} ({name})", format_value(*value)),
            _ => String::new(),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} |",
            figure.name,
            format_value(figure.value),
            figure.unit,
            baseline,
            figure
                .ratio
                .map(|ratio| format!("{ratio:.2}"))
                .unwrap_or_default(),
            figure.target.map(Target::describe).unwrap_or_default(),
            match figure.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
    text
}

/// A line of the latency chart: per-second percentiles of one kind of request.
pub struct Series {
    pub label: String,
    /// `(seconds since the load started, milliseconds)`.
    pub points: Vec<(f64, f64)>,
}

/// A stretch of the run with one load shape, drawn as a labelled band.
pub struct Span {
    pub label: String,
    pub from: f64,
    pub to: f64,
}

/// Colours that stay readable on the white and grey bands.
const LINE_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws latency over time as an SVG file.
pub fn chart(path: &Path, series: &[Series], spans: &[Span]) -> anyhow::Result<()> {
    let end = spans.iter().map(|span| span.to).fold(1.0_f64, f64::max);
    let top = series
        .iter()
        .flat_map(|series| series.points.iter().map(|(_, ms)| *ms))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency per second of load", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, (0.5_f64..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("milliseconds (log scale)")
        .draw()?;
    for (index, span) in spans.iter().enumerate() {
        let shade = if index % 2 == 0 {
            RGBColor(240, 240, 240)
        } else {
            RGBColor(250, 250, 250)
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(span.from, 0.5), (span.to, top)],
            shade.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            span.label.clone(),
            (span.from + 0.3, top / 1.3),
            ("sans-serif", 14),
        )))?;
    }
    for (index, line) in series.iter().enumerate() {
        let color = LINE_COLORS[index % LINE_COLORS.len()].to_rgba();
        // Seconds without requests of this kind, such as the reads-only phase for
        // commands, break the line instead of being bridged.
        let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
        for point in &line.points {
            match segments.last_mut() {
                Some(segment) if segment.last().is_some_and(|last| point.0 - last.0 <= 1.5) => {
                    segment.push(*point)
                }
                _ => segments.push(vec![*point]),
            }
        }
        let empty = Vec::new();
        let (last, earlier) = segments.split_last().unwrap_or((&empty, &[]));
        for segment in earlier {
            chart.draw_series(LineSeries::new(
                segment.iter().copied(),
                color.stroke_width(2),
            ))?;
        }
        chart
            .draw_series(LineSeries::new(last.iter().copied(), color.stroke_width(2)))?
            .label(line.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let durations = (1..=100).map(Duration::from_millis);
        let percentiles = Percentiles::of(durations);
        assert_eq!(percentiles.p50, 50.0);
        assert_eq!(percentiles.p90, 90.0);
        assert_eq!(percentiles.p99, 99.0);
        assert_eq!(percentiles.max, 100.0);
    }

    #[test]
    fn percentiles_of_nothing_are_zero() {
        let percentiles = Percentiles::of(std::iter::empty());
        assert_eq!(percentiles.max, 0.0);
    }

    #[test]
    fn ratio_targets_compare_with_the_baseline() {
        let baseline = Figure::new("produce", 1000.0, "ops/s");
        let met = Figure::new("update", 450.0, "ops/s")
            .target(Target::RatioAtLeast { bound: 0.4 })
            .against(&baseline);
        assert_eq!(met.ratio, Some(0.45));
        assert_eq!(met.met, Some(true));
        let missed = Figure::new("update", 300.0, "ops/s")
            .target(Target::RatioAtLeast { bound: 0.4 })
            .against(&baseline);
        assert_eq!(missed.met, Some(false));
        let within = Figure::new("p99", 49.0, "ms").target(Target::ValueAtMost { bound: 50.0 });
        assert_eq!(within.met, Some(true));
    }

    #[test]
    fn markdown_marks_missed_targets() {
        let figures = [Figure::new("rebuild", 20_000.0, "events/s")
            .target(Target::ValueAtLeast { bound: 50_000.0 })];
        let table = markdown(&figures, &["2 cores".to_owned()]);
        assert!(
            table.contains("| rebuild | 20000 | events/s |  |  | ≥ 50000 | **no** |"),
            "{table}"
        );
        assert!(table.contains("- 2 cores"));
    }
}
