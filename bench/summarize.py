#!/usr/bin/env python3
"""Median over repeated `edgesync bench --json` runs written by bench/run.sh.

    bench/summarize.py bench-results

Groups files by name without the trailing -N (fanout-1.json, fanout-2.json → fanout),
then by target, and prints the median of every metric with the min..max spread.
"""
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

KEYS = {
    "fanout": ["msgs_per_sec_p10", "msgs_per_sec_p50", "msgs_per_sec_p90", "msgs_per_server_cpu_sec",
               "server_cpu_secs", "client_cpu_secs", "gap_msgs", "dropped_conns"],
    "latency": ["latency_us_p50", "latency_us_p90", "latency_us_p99", "latency_us_p999", "latency_us_max",
                "missing_deliveries", "server_cpu_secs", "client_cpu_secs"],
    "durable": ["acks_per_sec_p10", "acks_per_sec_p50", "acks_per_sec_p90", "ack_us_p50", "ack_us_p99",
                "ack_us_p999", "ack_us_max", "acks_per_server_cpu_sec", "server_cpu_secs", "errors"],
    "idle": ["connections_open", "connections_failed", "rss_before_kib", "rss_after_kib", "kib_per_conn"],
}


def main(out: Path) -> None:
    groups = defaultdict(list)
    for f in sorted(out.glob("*.json")):
        name = re.sub(r"-\d+$", "", f.stem)
        try:
            reports = json.loads(f.read_text())
        except json.JSONDecodeError:
            print(f"skipping {f}: not complete JSON", file=sys.stderr)
            continue
        for report in reports:
            groups[(name, report["target"])].append(report)
    for (name, target), reports in sorted(groups.items()):
        scenario = reports[0]["scenario"]
        print(f"\n{name} on {target}: {len(reports)} run(s), params {reports[0]['params']}")
        for key in KEYS.get(scenario, []):
            vals = [m["value"] for r in reports for m in r["metrics"] if m["name"] == key]
            if vals:
                print(f"  {key:<28} {statistics.median(vals):>14,.0f}   ({min(vals):,.0f} .. {max(vals):,.0f})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results"))
