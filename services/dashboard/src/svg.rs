//! Charts as inline SVG, drawn on the server: no script, no library, readable by a screen
//! reader (each chart has a title, each bar and point its value as text).

use std::fmt::Write as _;

/// One bar: its label, its length, and the value as the chart writes it.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub text: String,
}

/// One line of a line chart: its name and a value for each day.
pub struct Series {
    pub name: String,
    pub values: Vec<u64>,
}

const WIDTH: f64 = 640.0;
/// Colours that stay apart for the colour-blind (Okabe–Ito).
const COLOURS: [&str; 6] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
];

/// Text for an SVG element or attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bars, one a row, longest value full width.
pub fn bars(title: &str, bars: &[Bar]) -> String {
    // Narrower than the line chart: bar charts sit two abreast, and their text must stay
    // readable.
    let width = 400.0;
    let row = 26.0;
    let label_width = 130.0;
    let height = row * bars.len() as f64 + 8.0;
    let max = bars
        .iter()
        .map(|b| b.value)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let mut svg = format!(
        r#"<svg class="chart bars" viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg"><title>{title}</title>"#,
        title = escape(title)
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = 4.0 + row * i as f64;
        let length = ((width - label_width - 110.0) * bar.value / max).max(1.0);
        let label: String = match bar.label.chars().count() {
            n if n > 18 => bar.label.chars().take(17).chain(['…']).collect(),
            _ => bar.label.clone(),
        };
        let _ = write!(
            svg,
            r#"<g class="bar" data-label="{label_attr}" data-value="{value}"><title>{label_attr}: {text}</title><text x="0" y="{ty}" class="label">{label}</text><rect x="{label_width}" y="{y}" width="{length:.1}" height="{h}" fill="{colour}" rx="3"/><text x="{tx:.1}" y="{ty}" class="value">{text}</text></g>"#,
            label_attr = escape(&bar.label),
            value = bar.value,
            ty = y + 15.0,
            label = escape(&label),
            h = row - 8.0,
            colour = COLOURS[0],
            tx = label_width + length + 6.0,
            text = escape(&bar.text),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One line a series over `days`, with a dot and its value on each day that has any.
pub fn lines(title: &str, days: &[String], series: &[Series]) -> String {
    let height = 220.0;
    let (left, right, top, bottom) = (36.0, 24.0, 28.0, 36.0);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let step = if days.len() > 1 {
        (WIDTH - left - right) / (days.len() - 1) as f64
    } else {
        0.0
    };
    let x = |i: usize| left + step * i as f64;
    let y = |v: u64| top + (height - top - bottom) * (1.0 - v as f64 / max);
    let mut svg = format!(
        r#"<svg class="chart lines" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg"><title>{title}</title>"#,
        title = escape(title)
    );
    // Axes: zero and the top value; the first, middle and last day.
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#b9c0cc"/><text x="{lx}" y="{ty0}" class="axis" text-anchor="end">0</text><text x="{lx}" y="{tmax}" class="axis" text-anchor="end">{max}</text>"##,
        y0 = y(0),
        x1 = WIDTH - right,
        lx = left - 6.0,
        ty0 = y(0) + 4.0,
        tmax = top + 4.0,
    );
    let labelled: std::collections::BTreeSet<usize> =
        [0, days.len() / 2, days.len().saturating_sub(1)]
            .into_iter()
            .collect();
    for i in labelled.into_iter().filter(|i| *i < days.len()) {
        let anchor = match i {
            0 => "start",
            i if i + 1 == days.len() => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{ty}" class="axis" text-anchor="{anchor}">{day}</text>"#,
            x = x(i),
            ty = height - 14.0,
            day = escape(&days[i]),
        );
    }
    for (n, s) in series.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let points: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<g class="series" data-series="{name}"><polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>"#,
            name = escape(&s.name),
            points = points.join(" "),
        );
        for (i, v) in s.values.iter().enumerate().filter(|(_, v)| **v > 0) {
            let _ = write!(
                svg,
                r#"<g class="point" data-day="{day}" data-value="{v}"><circle cx="{cx:.1}" cy="{cy:.1}" r="4" fill="{colour}"><title>{name}, {day}: {v}</title></circle><text x="{cx:.1}" y="{ty:.1}" class="value" text-anchor="middle">{v}</text></g>"#,
                day = escape(&days[i]),
                cx = x(i),
                cy = y(*v),
                ty = y(*v) - 8.0,
                name = escape(&s.name),
            );
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    svg
}

/// The colour of the `n`th series, for the legend.
pub fn colour(n: usize) -> &'static str {
    COLOURS[n % COLOURS.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_carry_their_values_and_escape_labels() {
        let svg = bars(
            "Failures",
            &[Bar {
                label: "<script>".into(),
                value: 3.0,
                text: "3".into(),
            }],
        );
        assert!(svg.contains(r#"data-value="3""#));
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script>"));
    }

    #[test]
    fn lines_mark_each_day_with_messages() {
        let days = vec!["12-01".to_owned(), "12-02".to_owned()];
        let svg = lines(
            "Messages",
            &days,
            &[Series {
                name: "Sales".into(),
                values: vec![0, 2],
            }],
        );
        assert!(svg.contains(r#"data-day="12-02" data-value="2""#));
        assert!(!svg.contains(r#"data-day="12-01""#));
    }
}
