//! Results: one [`Report`] per (scenario, target), printed as a table or JSON.

use hdrhistogram::Histogram;
use serde::Serialize;

/// One scenario run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    /// The parameters it ran with (subscribers, rate, seconds, …).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Results in print order.
    pub metrics: Vec<Metric>,
}

/// One named figure; units are part of the name (`msgs_per_sec_p50`, `latency_us_p99`).
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
}

impl Report {
    pub fn new(scenario: &'static str, target: impl Into<String>) -> Self {
        Report {
            scenario,
            target: target.into(),
            params: serde_json::Map::new(),
            metrics: Vec::new(),
        }
    }

    pub fn param(&mut self, k: &str, v: impl Into<serde_json::Value>) -> &mut Self {
        self.params.insert(k.into(), v.into());
        self
    }

    pub fn metric(&mut self, name: impl Into<String>, value: f64) -> &mut Self {
        self.metrics.push(Metric {
            name: name.into(),
            value,
        });
        self
    }

    pub fn value(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// Add CPU seconds used by server and load generator, and `work` per CPU-second of each.
    pub fn cpu(&mut self, span: (Option<f64>, Option<f64>), work: f64, unit: &str) -> &mut Self {
        if let Some(s) = span.0.filter(|s| *s > 0.0) {
            self.metric("server_cpu_secs", s)
                .metric(format!("{unit}_per_server_cpu_sec"), work / s);
        }
        if let Some(c) = span.1.filter(|c| *c > 0.0) {
            self.metric("client_cpu_secs", c)
                .metric(format!("{unit}_per_client_cpu_sec"), work / c);
        }
        self
    }

    /// Add `{prefix}_p10/p50/p90` over per-second window rates.
    pub fn windows(&mut self, prefix: &str, rates: &[f64]) -> &mut Self {
        let q = |p: f64| quantile(rates, p);
        self.metric(format!("{prefix}_p10"), q(0.10))
            .metric(format!("{prefix}_p50"), q(0.50))
            .metric(format!("{prefix}_p90"), q(0.90))
    }

    /// Add `{prefix}_p50 … _max` from a histogram recorded in microseconds.
    pub fn latency(&mut self, prefix: &str, h: &Histogram<u64>) -> &mut Self {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            self.metric(format!("{prefix}_{name}"), h.value_at_quantile(q) as f64);
        }
        self.metric(format!("{prefix}_max"), h.max() as f64)
            .metric(format!("{prefix}_samples"), h.len() as f64)
    }
}

/// Nearest-rank quantile of unsorted values (0 when empty).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// A latency histogram in microseconds, 1 µs .. 100 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants that satisfy new_with_bounds' preconditions (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Figures compared between two targets of the same scenario.
const RATIO_KEYS: &[&str] = &[
    "msgs_per_sec_p50",
    "msgs_per_server_cpu_sec",
    "latency_us_p50",
    "latency_us_p99",
    "acks_per_sec_p50",
    "kib_per_conn",
];

/// Pairs compared when both ran: (numerator, denominator).
const RATIO_PAIRS: &[(&str, &str)] = &[
    ("edgesync-quic", "edgesync"),
    ("edgesync-quic", "edgesync-wss"),
    ("edgesync-wss", "edgesync"),
    ("edgesync", "nats"),
];

/// `(key, numerator target, denominator target, ratio)` for every compared pair that ran.
pub fn ratios(reports: &[Report]) -> Vec<(&'static str, String, String, f64)> {
    let mut out = Vec::new();
    for (num, den) in RATIO_PAIRS {
        let find = |t: &str| reports.iter().find(|r| r.target == t);
        let (Some(a), Some(b)) = (find(num), find(den)) else {
            continue;
        };
        if a.scenario != b.scenario {
            continue;
        }
        for key in RATIO_KEYS {
            if let (Some(x), Some(y)) = (a.value(key), b.value(key))
                && y > 0.0
            {
                out.push((*key, a.target.clone(), b.target.clone(), x / y));
            }
        }
    }
    out
}

/// Print reports as a table, then the ratio lines (QUIC/WS, edgesync/nats) of what ran.
pub fn print_table(reports: &[Report]) {
    for r in reports {
        let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("\n== {} on {} ({})", r.scenario, r.target, params.join(" "));
        for m in &r.metrics {
            println!("  {:<28} {:>16}", m.name, human(m.value));
        }
    }
    let lines = ratios(reports);
    if !lines.is_empty() {
        println!();
    }
    for (key, a, b, ratio) in lines {
        println!("{key}: {a} / {b} = {ratio:.2}");
    }
}

fn human(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let s = format!("{}", v as i64);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
                out.push('_');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.1), 1.0);
        assert_eq!(quantile(&v, 0.9), 5.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(human(1234567.0), "1_234_567");
    }

    #[test]
    fn ratios_compare_quic_to_ws_and_edgesync_to_nats() {
        let report = |target: &str, v: f64| {
            let mut r = Report::new("fanout", target);
            r.metric("msgs_per_sec_p50", v);
            r
        };
        let all = [
            report("edgesync", 100.0),
            report("edgesync-wss", 50.0),
            report("edgesync-quic", 80.0),
            report("nats", 50.0),
        ];
        let got = ratios(&all);
        assert_eq!(
            got,
            vec![
                (
                    "msgs_per_sec_p50",
                    "edgesync-quic".into(),
                    "edgesync".into(),
                    0.8
                ),
                (
                    "msgs_per_sec_p50",
                    "edgesync-quic".into(),
                    "edgesync-wss".into(),
                    1.6
                ),
                (
                    "msgs_per_sec_p50",
                    "edgesync-wss".into(),
                    "edgesync".into(),
                    0.5
                ),
                ("msgs_per_sec_p50", "edgesync".into(), "nats".into(), 2.0),
            ]
        );
        assert!(ratios(&all[..1]).is_empty());
    }
}
