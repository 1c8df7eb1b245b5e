#!/usr/bin/env python3
"""Charts for docs/performance.md, from the results of the last runs:

  target/load/results.jsonl   (benches/load.sh)
  target/criterion/keyed_lock (cargo bench -p keylock --bench keyed_lock)
  target/pg_strategies/results.json, and by_user.json if present
                              (benches/pg_strategies.sh; see docs/performance.md)

  pip install matplotlib && python3 scripts/plot_performance.py   # writes docs/perf-*.svg
  python3 scripts/plot_performance.py pg                          # only docs/perf-pg.svg (or: http lock)

perf-pg.svg's right panel reads the store rows (pointlock-sqlite, pointlock-pg,
pointlock-pgN) of target/load/results.jsonl: run load.sh with
STORES="memory sqlite pg pg4" first, or the panel is left out.
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
    contenders = ["keylock", "tokio_mutex", "tokio_mutex_owned", "std_map_of_tokio_mutex", "dashmap_tokio_mutex", "lockable"]
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


STRATEGIES = [
    ("pointlock", "(a) pointlock", "#3b6ea8"),
    ("pessimistic", "(b) SELECT FOR UPDATE", "#d08c2e"),
    ("pessimistic-cte", "(b') FOR UPDATE, CTE write", "#e8b86a"),
    ("optimistic", "(c) version + retry", "#8c8c8c"),
    ("sql", "(d) one UPDATE, policy in SQL", "#5a9e5a"),
    ("redis-lock", "(e) Redis lock per user", "#b05a5a"),
]


def pg_chart():
    """The strategy benchmark (charges/s, median and min-max of the
    rounds) and, if load.sh ran the stores, HTTP 2xx/s per store."""
    main = json.load(open(ROOT / "target/pg_strategies/results.json"))
    by_user_path = ROOT / "target/pg_strategies/by_user.json"
    by_user = json.load(open(by_user_path)) if by_user_path.exists() else None

    def cell(doc, load, n, strategy):
        for r in doc["summary"]:
            if r["load"] == load and r["instances"] == n and r["strategy"] == strategy:
                return r["throughput"]
        return None

    groups = [(main, 1, "1 instance"), (main, 4, "4 instances\nround robin")]
    if by_user:
        groups.append((by_user, 4, "4 instances\nrouted by user"))

    http_path = ROOT / "target/load/results.jsonl"
    http_rows = []
    if http_path.exists():
        http_rows = [json.loads(line) for line in open(http_path)]
        http_rows = [r for r in http_rows if r["server"] != "baseline" and "ok_rps" in r]
    stores = list(dict.fromkeys(r["server"] for r in http_rows))
    with_http = len(stores) > 1

    ncols = 3 if with_http else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.4 * ncols, 4.8), layout="constrained")
    width = 0.16
    for ax, load, title in [(axes[0], "hot", "1,000 charges on ONE user"),
                            (axes[1], "spread", "1,000 charges over 10,000 users")]:
        for k, (name, label, color) in enumerate(STRATEGIES):
            xs, ys, lo, hi = [], [], [], []
            for g, (doc, n, _) in enumerate(groups):
                t = cell(doc, load, n, name)
                if t is None:
                    continue
                xs.append(g + (k - 2) * width)
                ys.append(t["median"])
                lo.append(t["median"] - t["min"])
                hi.append(t["max"] - t["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=color, label=label,
                   error_kw={"elinewidth": 0.8})
        # pointlock / best of (b), (b'), (c) in the same run, above pointlock's bar
        for g, (doc, n, _) in enumerate(groups):
            ours = cell(doc, load, n, "pointlock")
            rivals = [cell(doc, load, n, s) for s in ("pessimistic", "pessimistic-cte", "optimistic")]
            rivals = [r["median"] for r in rivals if r]
            if ours and rivals:
                ax.annotate(f"{ours['median'] / max(rivals):.2f}x", (g - 2 * width, ours["max"]),
                            ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(groups)), [label for _, _, label in groups], fontsize=8)
        ax.set_ylabel("acknowledged charges per second")
        ax.set_title(title, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside lower left", ncol=3)

    if with_http:
        ax = axes[2]
        names = {"pointlock": "memory", "pointlock-sqlite": "SQLite"}

        def label(s):
            return names.get(s) or f"PostgreSQL x{s[len('pointlock-pg'):] or '1'}"

        scenarios = [("charge", "charge, 10k users"), ("hot", "one hot user")]
        w = 0.8 / len(stores)
        colors = ["#bbbbbb", "#7a9cc6", "#3b6ea8", "#1d3f6e", "#0b2340"]
        for k, server in enumerate(stores):
            ys = [statistics.median(r["ok_rps"] for r in http_rows
                                    if r["server"] == server and r["scenario"] == s) for s, _ in scenarios]
            bars = ax.bar([i + (k - (len(stores) - 1) / 2) * w for i in range(len(scenarios))], ys, w,
                          label=label(server), color=colors[k % len(colors)])
            for bar, y in zip(bars, ys):
                ax.annotate(f"{y / 1000:.1f}k", (bar.get_x() + bar.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(range(len(scenarios)), [t for _, t in scenarios], fontsize=8)
        ax.set_ylabel("2xx responses per second (log)")
        ax.set_title("HTTP, wrk 64 connections (medians)", fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="outside lower right", ncol=2)
    fig.suptitle("PostgreSQL 15, 2 shared vCPUs, pool 16 per instance (label: pointlock / best of b, b', c)",
                 fontsize=9)
    fig.savefig(DOCS / "perf-pg.svg")


CHARTS = {"http": http_chart, "lock": lock_chart, "pg": pg_chart}

if __name__ == "__main__":
    chosen = sys.argv[1:] or list(CHARTS)
    for name in chosen:
        CHARTS[name]()
        print(f"wrote docs/perf-{name}.svg")
