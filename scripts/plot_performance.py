#!/usr/bin/env python3
"""Charts for docs/performance.md, from the results of the last runs:

  target/load/results.jsonl   (benches/load.sh)
  target/criterion/keyed_lock (cargo bench --bench keyed_lock)

  pip install matplotlib && python3 scripts/plot_performance.py   # writes docs/perf-*.svg
"""
import json
import pathlib
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_table import load  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def http_chart():
    rows = [json.loads(line) for line in open(ROOT / "target/load/results.jsonl")]
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))

    def rps(server, scenario):
        return statistics.median(r["rps"] for r in rows if r["server"] == server and r["scenario"] == scenario)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.38
    xs = range(len(scenarios))
    base = [rps("baseline", s) for s in scenarios]
    ours = [rps("pointlock", s) for s in scenarios]
    ax.bar([x - width / 2 for x in xs], base, width, label="bare hyper baseline", color="#bbbbbb")
    bars = ax.bar([x + width / 2 for x in xs], ours, width, label="pointlock --store memory", color="#3b6ea8")
    for bar, o, b in zip(bars, ours, base):
        ax.annotate(f"{o / b:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    labels = {"get": "GET, 10k users", "charge": "charge, 10k users", "hot": "one hot user\ncharge/use"}
    ax.set_xticks(list(xs), [labels.get(s, s) for s in scenarios])
    ax.set_ylabel("requests per second")
    ax.set_title("HTTP throughput, 64 connections (label: ratio to baseline)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "perf-http.svg")


def lock_chart():
    rows = load("keyed_lock")
    contenders = ["pointlock", "tokio_mutex", "tokio_mutex_owned", "std_map_of_tokio_mutex", "dashmap_tokio_mutex", "lockable"]
    scenarios = ["uncontended", "same_key/2", "same_key/8", "same_key/64"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in contenders:
        ys = [rows.get(f"keyed_lock/{s}/{name}", {}).get("ns_per_element") for s in scenarios]
        ax.plot(range(len(scenarios)), ys, marker="o", label=name)
    ax.set_xticks(range(len(scenarios)), ["uncontended", "2 tasks", "8 tasks", "64 tasks"])
    ax.set_yscale("log")
    ax.set_ylabel("ns per acquire + release (log)")
    ax.set_title("Lock time vs contention on one key (2 worker threads)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "perf-lock.svg")


if __name__ == "__main__":
    http_chart()
    lock_chart()
    print("wrote docs/perf-http.svg, docs/perf-lock.svg")
