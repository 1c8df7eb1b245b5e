//! What the criterion benches share: runtimes and group settings, so every group
//! is measured the same way.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use tokio::runtime::Runtime;

/// A current-thread runtime for 1 worker, a multi-thread one otherwise.
pub fn runtime(workers: usize) -> Runtime {
    let built = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .build()
    };
    built.expect("a tokio runtime")
}

/// 0.5 s warm-up, 2 s measurement, 20 samples: short enough for 2 shared cores.
pub fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
}
