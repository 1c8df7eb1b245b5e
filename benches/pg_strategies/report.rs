//! The summary over rounds: medians (min–max) per cell, the markdown table and
//! the same-run ratios.

use serde_json::{json, Value};

use crate::cell::Cell;
use crate::{Args, Strategy};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One row per load × instances × strategy: medians, minima and maxima over
/// the rounds; counts summed over them.
pub(crate) fn summarize(cells: &[Cell], args: &Args, strategies: &[Strategy]) -> Vec<Value> {
    let mut rows = Vec::new();
    for &load in &args.loads {
        for &n in &args.instances {
            for &strategy in strategies {
                let of: Vec<&Cell> = cells
                    .iter()
                    .filter(|c| c.strategy == strategy && c.load == load && c.instances == n)
                    .collect();
                if of.is_empty() {
                    continue;
                }
                let col = |f: &dyn Fn(&Cell) -> f64| -> (f64, f64, f64) {
                    let mut v: Vec<f64> = of.iter().map(|c| f(c)).collect();
                    let m = median(&mut v);
                    (m, v[0], v[v.len() - 1])
                };
                let spread = |t: (f64, f64, f64)| json!({"median": t.0, "min": t.1, "max": t.2});
                let wall = col(&|c| c.wall.as_secs_f64() * 1e3);
                let tput = col(&|c| c.throughput());
                let retries = col(&|c| c.retries as f64);
                let pg = if of.iter().all(|c| c.pg_cpu.is_some()) {
                    Some(col(&|c| c.pg_cpu.unwrap_or_default().sched * 1e3))
                } else {
                    None
                };
                let redis = if of.iter().all(|c| c.redis_cpu.is_some()) {
                    Some(col(&|c| c.redis_cpu.unwrap_or_default().sched * 1e3))
                } else {
                    None
                };
                let own = col(&|c| c.own_cpu.sched * 1e3);
                let p50 = col(&|c| c.p50.as_secs_f64() * 1e3);
                let p99 = col(&|c| c.p99.as_secs_f64() * 1e3);
                rows.push(json!({
                    "strategy": strategy.to_string(),
                    "load": load.to_string(),
                    "instances": n,
                    "rounds": of.len(),
                    "wall_ms": spread(wall),
                    "throughput": spread(tput),
                    "retries": spread(retries),
                    "pg_cpu_ms": pg.map(spread),
                    "redis_cpu_ms": redis.map(spread),
                    "client_cpu_ms": spread(own),
                    "p50_ms": spread(p50),
                    "p99_ms": spread(p99),
                    "gave_up": of.iter().map(|c| c.gave_up).sum::<u64>(),
                    "errors": of.iter().map(|c| c.errors).sum::<u64>(),
                    "lock_expired": of.iter().map(|c| c.lock_expired).sum::<u64>(),
                    "lost": of.iter().map(|c| c.check.lost).sum::<i64>(),
                    "phantom": of.iter().map(|c| c.check.phantom).sum::<i64>(),
                    "history_mismatch": of.iter().map(|c| c.check.history_mismatch).sum::<i64>(),
                }));
            }
        }
    }
    rows
}

pub(crate) fn print_table(rows: &[Value]) {
    println!();
    println!("| load | instances | strategy | wall ms (min–max) | charges/s (min–max) | retries (min–max) | gave up | errors | lost | phantom | history ≠ balance | PostgreSQL CPU ms (min–max) | Redis CPU ms | client CPU ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let m = |k: &str| {
            let v = &r[k];
            format!(
                "{:.0} ({:.0}–{:.0})",
                v["median"].as_f64().unwrap_or(0.0),
                v["min"].as_f64().unwrap_or(0.0),
                v["max"].as_f64().unwrap_or(0.0)
            )
        };
        let pg = if r["pg_cpu_ms"].is_null() {
            "-".to_string()
        } else {
            m("pg_cpu_ms")
        };
        let redis = match r["redis_cpu_ms"]["median"].as_f64() {
            Some(ms) => format!("{ms:.0}"),
            None => "-".to_string(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
            r["load"].as_str().unwrap_or(""),
            r["instances"],
            r["strategy"].as_str().unwrap_or(""),
            m("wall_ms"),
            m("throughput"),
            m("retries"),
            r["gave_up"],
            r["errors"],
            r["lost"],
            r["phantom"],
            r["history_mismatch"],
            pg,
            redis,
            r["client_cpu_ms"]["median"].as_f64().unwrap_or(0.0),
            r["p99_ms"]["median"].as_f64().unwrap_or(0.0),
        );
    }
}

/// Same-run ratios: pointlock against the best of the pessimistic and optimistic
/// strategies, against the best of (b)-(d), and against the Redis lock (e).
pub(crate) fn print_ratios(rows: &[Value]) -> Vec<Value> {
    let tput = |load: &str, n: u64, strategy: &str| {
        rows.iter()
            .find(|r| r["load"] == load && r["instances"] == n && r["strategy"] == strategy)
            .and_then(|r| r["throughput"]["median"].as_f64())
    };
    let mut out = Vec::new();
    println!();
    for load in ["hot", "spread"] {
        for n in [1u64, 4] {
            let Some(ours) = tput(load, n, "pointlock") else {
                continue;
            };
            let best = |names: &[&'static str]| {
                names
                    .iter()
                    .filter_map(|s| tput(load, n, s).map(|t| (t, *s)))
                    .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap())
            };
            let bc = best(&["pessimistic", "pessimistic-cte", "optimistic"]);
            let all = best(&["pessimistic", "pessimistic-cte", "optimistic", "sql"]);
            let redis = tput(load, n, "redis-lock");
            let mut row = json!({"load": load, "instances": n});
            let mut said = Vec::new();
            if let (Some(bc), Some(all)) = (bc, all) {
                said.push(format!(
                    "pointlock / best of (b),(c) [{}] = {:.2}; pointlock / best of all [{}] = {:.2}",
                    bc.1,
                    ours / bc.0,
                    all.1,
                    ours / all.0
                ));
                row["best_bc"] = json!(bc.1);
                row["ratio_bc"] = json!(ours / bc.0);
                row["best_all"] = json!(all.1);
                row["ratio_all"] = json!(ours / all.0);
            }
            if let Some(redis) = redis {
                said.push(format!("pointlock / redis-lock = {:.2}", ours / redis));
                row["ratio_redis_lock"] = json!(ours / redis);
            }
            if !said.is_empty() {
                println!("{load} x{n}: {}", said.join("; "));
                out.push(row);
            }
        }
    }
    out
}
