//! The `edgesync` binary: parses the command line and hands off to [`edgesync::cli`].

/// jemalloc instead of the system allocator: session tasks, the broker and the store
/// writer allocate and free small buffers at a high rate on different threads, where
/// glibc's arenas cost a quarter of the CPU. Measured side by side (BENCHMARKS.md,
/// "Allocator"): +70 % acked publishes per server CPU-second, +46 % fan-out
/// deliveries per CPU-second, idle connections 6.3 → 6.7 KiB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    edgesync::cli::main()
}
