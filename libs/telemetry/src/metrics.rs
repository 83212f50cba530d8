//! The process's Prometheus metrics, in the text exposition format. Code that does the work
//! counts it where it happens ([`count`], [`observe`]); figures that are cheaper to read when
//! scraped than to keep up to date (a projection's lag, a queue's depth) come from collectors
//! registered once ([`collect`]) and asked on each scrape.
//!
//! One registry per process, as Prometheus expects of a target: every service the process runs
//! adds to it, and `/metrics` renders it whole.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the latency histograms: from a millisecond to half a minute.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label names and values, in the order they are written.
pub type Labels = Vec<(&'static str, String)>;

/// One value of a gauge or counter, as a collector reports it on a scrape.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    pub fn gauge(name: &'static str, help: &'static str, labels: Labels, value: f64) -> Self {
        Self {
            name,
            help,
            kind: Kind::Gauge,
            labels,
            value,
        }
    }
}

/// What the collectors reported for one metric: its help, kind and samples.
type Collected = (&'static str, Kind, Vec<(Labels, f64)>);

type Collector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Sample>> + Send>> + Send + Sync + 'static>;

#[derive(Debug, Default)]
struct Histogram {
    /// Counts per bucket of [`LATENCY_BUCKETS`], not cumulative.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

#[derive(Debug)]
enum Values {
    Counter(BTreeMap<Vec<(&'static str, String)>, f64>),
    Histogram(BTreeMap<Vec<(&'static str, String)>, Histogram>),
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    values: Values,
}

/// What the process counted, and who to ask on a scrape.
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
    collectors: Mutex<Vec<Collector>>,
}

/// The process's registry.
pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// Adds `by` to the counter `name` with `labels`, in the process's registry.
pub fn count(name: &'static str, help: &'static str, labels: Labels, by: f64) {
    global().count(name, help, labels, by);
}

/// Records a duration in the latency histogram `name`, in the process's registry.
pub fn observe(name: &'static str, help: &'static str, labels: Labels, took: Duration) {
    global().observe(name, help, labels, took);
}

/// Asks `collector` for its samples on every scrape of the process's registry.
pub fn collect<F, Fut>(collector: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Sample>> + Send + 'static,
{
    global().collect(collector);
}

impl Registry {
    pub fn count(&self, name: &'static str, help: &'static str, labels: Labels, by: f64) {
        let mut families = self.families.lock().expect("metrics lock");
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            values: Values::Counter(BTreeMap::new()),
        });
        if let Values::Counter(values) = &mut family.values {
            *values.entry(labels).or_default() += by;
        }
    }

    pub fn observe(&self, name: &'static str, help: &'static str, labels: Labels, took: Duration) {
        let seconds = took.as_secs_f64();
        let mut families = self.families.lock().expect("metrics lock");
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            values: Values::Histogram(BTreeMap::new()),
        });
        if let Values::Histogram(values) = &mut family.values {
            let histogram = values.entry(labels).or_default();
            histogram.buckets.resize(LATENCY_BUCKETS.len(), 0);
            if let Some(bucket) = LATENCY_BUCKETS.iter().position(|le| seconds <= *le) {
                histogram.buckets[bucket] += 1;
            }
            histogram.count += 1;
            histogram.sum += seconds;
        }
    }

    pub fn collect<F, Fut>(&self, collector: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Sample>> + Send + 'static,
    {
        self.collectors
            .lock()
            .expect("metrics lock")
            .push(Arc::new(move || Box::pin(collector())));
    }

    /// Everything, in the text exposition format: the collectors' samples, then what was counted.
    pub async fn render(&self) -> String {
        let collectors = self.collectors.lock().expect("metrics lock").clone();
        let mut collected: BTreeMap<&'static str, Collected> = BTreeMap::new();
        for collector in collectors {
            for sample in collector().await {
                collected
                    .entry(sample.name)
                    .or_insert_with(|| (sample.help, sample.kind, Vec::new()))
                    .2
                    .push((sample.labels, sample.value));
            }
        }
        let mut out = String::new();
        for (name, (help, kind, samples)) in &collected {
            header(&mut out, name, help, *kind);
            for (labels, value) in samples {
                line(&mut out, name, labels, None, *value);
            }
        }
        let families = self.families.lock().expect("metrics lock");
        for (name, family) in families.iter() {
            match &family.values {
                Values::Counter(values) => {
                    header(&mut out, name, family.help, Kind::Counter);
                    for (labels, value) in values {
                        line(&mut out, name, labels, None, *value);
                    }
                }
                Values::Histogram(values) => {
                    header(&mut out, name, family.help, Kind::Histogram);
                    for (labels, histogram) in values {
                        let bucket = format!("{name}_bucket");
                        let mut cumulative = 0;
                        for (le, count) in LATENCY_BUCKETS.iter().zip(&histogram.buckets) {
                            cumulative += count;
                            let le = le.to_string();
                            line(&mut out, &bucket, labels, Some(&le), cumulative as f64);
                        }
                        line(
                            &mut out,
                            &bucket,
                            labels,
                            Some("+Inf"),
                            histogram.count as f64,
                        );
                        line(
                            &mut out,
                            &format!("{name}_sum"),
                            labels,
                            None,
                            histogram.sum,
                        );
                        let count = histogram.count as f64;
                        line(&mut out, &format!("{name}_count"), labels, None, count);
                    }
                }
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.name());
}

fn line(out: &mut String, name: &str, labels: &Labels, le: Option<&str>, value: f64) {
    out.push_str(name);
    let le = le.map(|le| ("le", le.to_owned()));
    let all: Vec<_> = labels.iter().cloned().chain(le).collect();
    if !all.is_empty() {
        out.push('{');
        for (i, (label, value)) in all.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_histograms_and_collected_gauges_render_in_the_text_format() {
        let registry = Registry::default();
        let labels = || vec![("location", "loc\"1".to_owned())];
        registry.count("x_total", "Things done.", labels(), 1.0);
        registry.count("x_total", "Things done.", labels(), 2.0);
        registry.observe("x_seconds", "Took.", vec![], Duration::from_millis(3));
        registry.observe("x_seconds", "Took.", vec![], Duration::from_secs(60));
        registry.collect(|| async {
            vec![Sample::gauge(
                "x_depth",
                "Waiting.",
                vec![("q", "a".into())],
                7.0,
            )]
        });
        let text = registry.render().await;
        for expected in [
            "# TYPE x_depth gauge",
            "x_depth{q=\"a\"} 7",
            "# TYPE x_total counter",
            "x_total{location=\"loc\\\"1\"} 3",
            "# TYPE x_seconds histogram",
            "x_seconds_bucket{le=\"0.0025\"} 0",
            "x_seconds_bucket{le=\"0.005\"} 1",
            "x_seconds_bucket{le=\"30\"} 1",
            "x_seconds_bucket{le=\"+Inf\"} 2",
            "x_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
        }
    }
}
