//! The suite's slice of the soak run (`edgesync-bench soak`, an hour in
//! BENCHMARKS.md): a real gateway process under a steady publish rate and
//! connection churn for ten seconds. Behaviour, not speed: no delivery is
//! missed, no churned connection fails, and the churn leaves no descriptor
//! behind. (Needs the `edgesync` binary beside the bench's, as `cargo test --workspace` builds it.)

use std::process::Command;

fn metric(report: &serde_json::Value, name: &str) -> f64 {
    report["metrics"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["name"] == name))
        .and_then(|x| x["value"].as_f64())
        .unwrap_or_else(|| panic!("metric {name} in {report}"))
}

#[test]
fn a_short_soak_loses_nothing_and_leaks_no_descriptors() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgesync-bench"))
        .args([
            "soak",
            "--seconds",
            "10",
            "--rate",
            "200",
            "--subscribers",
            "4",
            "--churn",
            "10",
            "--sample",
            "1",
            "--json",
        ])
        .output()
        .expect("run edgesync-bench");
    assert!(
        out.status.success(),
        "soak failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let r = &reports[0];
    assert_eq!(metric(r, "published"), 2000.0);
    assert_eq!(metric(r, "missing_deliveries"), 0.0, "{r}");
    assert_eq!(metric(r, "gap_msgs"), 0.0, "{r}");
    assert_eq!(metric(r, "errors") + metric(r, "dropped_conns"), 0.0, "{r}");
    assert!(metric(r, "churn_connections") >= 50.0, "{r}");
    assert_eq!(metric(r, "churn_failed"), 0.0, "{r}");
    // Every churned connection is gone again: the last sample has no more open
    // descriptors than the first, give or take the publisher and one churned
    // connection in flight (a leak of one per connection would add ~100).
    assert!(metric(r, "fds_last") <= metric(r, "fds_first") + 3.0, "{r}");
}
