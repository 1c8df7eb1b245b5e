#!/usr/bin/env python3
"""Tables of criterion results (target/criterion/<group>/...), as ratios within one run.

  python3 scripts/bench_table.py keyed_lock service     # markdown tables on stdout
  python3 scripts/bench_table.py --json keyed_lock      # {"id": ns_per_iteration, ...}

Reads each benchmark's new/estimates.json (mean point estimate, ns per iteration)
and new/benchmark.json (its id and throughput), so it reports exactly what the last
`cargo bench` run measured.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def load(group):
    out = {}
    for bench in (ROOT / group).glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        ns = est["mean"]["point_estimate"]
        elements = (meta.get("throughput") or {}).get("Elements") or 1
        out[meta["full_id"]] = {"ns": ns, "elements": elements, "ns_per_element": ns / elements}
    return out


def main(argv):
    as_json = "--json" in argv
    groups = [a for a in argv if not a.startswith("--")]
    results = {g: load(g) for g in groups}
    if as_json:
        print(json.dumps(results, indent=1, sort_keys=True))
        return
    for group, rows in results.items():
        # Scenario = id without its last segment (the contender or variant).
        scenarios = {}
        for full_id, r in rows.items():
            scenario, _, name = full_id.rpartition("/")
            scenarios.setdefault(scenario, {})[name] = r
        print(f"\n### {group}\n")
        print("| scenario | contender | time per op | ops/s | vs first |")
        print("|---|---|---|---|---|")
        for scenario in sorted(scenarios):
            contenders = scenarios[scenario]
            order = sorted(contenders, key=lambda n: (n not in ("keylock", "pointlock"), n))
            first = contenders[order[0]]["ns_per_element"]
            for name in order:
                per = contenders[name]["ns_per_element"]
                print(f"| {scenario} | {name} | {per:,.1f} ns | {1e9 / per:,.0f} | {per / first:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
