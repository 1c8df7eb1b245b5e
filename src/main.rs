//! The `pointlock` binary: everything it does is [`pointlock_server::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    pointlock_server::cli::main()
}

/// jemalloc, with its background purging thread (the `background_threads` feature):
/// a charge costs ~8% fewer instructions than with glibc's malloc (about twenty
/// small allocations per request), and memory freed after a burst of users goes
/// back to the OS within seconds instead of staying in glibc's free lists. See
/// docs/performance.md; the baseline server uses the same allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
