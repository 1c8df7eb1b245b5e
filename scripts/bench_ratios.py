#!/usr/bin/env python3
"""The throughput goals as same-run ratios, from benches/load.sh results.

    scripts/bench_ratios.py SPREAD_RESULTS.jsonl [MILLION_RESULTS.jsonl]

SPREAD: rounds of `baseline`, `pointlock` (memory) and `pointlock-sqlite`
(the default store) over the scenarios get, charge and hot. MILLION (optional):
one `pointlock-sqlite` server taking charge runs back to back over ids drawn
from 100 million. Prints a markdown table: each ratio per round, its median,
the goal, and whether the median meets it.
"""
import json
import statistics
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def by_round(rows, server, scenario, key="ok_rps"):
    out = {}
    for r in rows:
        if r["server"] == server and r["scenario"] == scenario:
            value = r.get(key)
            if value is None:
                value = r["rps"]
            out[r["round"]] = value
    return out


def ratio_rows(rows):
    """(name, per-round ratios, goal, higher_is_better)"""
    def ratio(num, den):
        a, b = by_round(rows, *num), by_round(rows, *den)
        return [a[k] / b[k] for k in sorted(a) if k in b and b[k]]

    p99 = by_round(rows, "pointlock-sqlite", "charge", "p99_us")
    return [
        ("GET: pointlock (memory) / bare hyper", ratio(("pointlock", "get"), ("baseline", "get")), 0.95, True),
        ("charge over 10k users: pointlock (memory) / bare hyper", ratio(("pointlock", "charge"), ("baseline", "charge")), 0.85, True),
        ("charge over 10k users: default store / memory", ratio(("pointlock-sqlite", "charge"), ("pointlock", "charge")), 0.5, True),
        ("charge over 10k users, default store: p99 (ms)", [v / 1000 for _, v in sorted(p99.items())], 4.0, False),
        ("one hot user / spread charge, default store", ratio(("pointlock-sqlite", "hot"), ("pointlock-sqlite", "charge")), 1.0, True),
    ]


def million_row(spread, million):
    """The first run that starts with >= 1M users, against the spread rate."""
    runs = [r for r in million if r["scenario"] == "charge"]
    users, start = 0, None
    for r in runs:
        if users >= 1_000_000:
            start = r
            break
        users += r["requests"] - r.get("non2xx", 0)
    spread_rates = list(by_round(spread, "pointlock-sqlite", "charge").values())
    if start is None or not spread_rates:
        return ("default store after 1M users / over 10k users", [], 0.8, True, f"never reached 1M users ({users:,})")
    base = statistics.median(spread_rates)
    rates = ", ".join(f"{r['ok_rps']:,.0f}" for r in runs)
    return ("default store after 1M users / over 10k users", [start["ok_rps"] / base], 0.8, True,
            f"runs: {rates} req/s; about {users:,} users before the run compared")


def main():
    spread = load(sys.argv[1])
    table = [row + ("",) for row in ratio_rows(spread)]
    if len(sys.argv) > 2:
        table.append(million_row(spread, load(sys.argv[2])))
    print()
    print("| measure | per round | median | goal | met |")
    print("|---|---|---|---|---|")
    for name, values, goal, higher, note in table:
        if not values:
            print(f"| {name} | - | - | {'>=' if higher else '<='} {goal} | no data {note} |")
            continue
        median = statistics.median(values)
        met = median >= goal if higher else median <= goal
        per = " / ".join(f"{v:.2f}" for v in values)
        extra = f" ({note})" if note else ""
        print(f"| {name} | {per} | **{median:.3f}** | {'>=' if higher else '<='} {goal} | {'yes' if met else 'no'}{extra} |")


if __name__ == "__main__":
    main()
