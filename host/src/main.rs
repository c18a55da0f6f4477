//! The `netless` command line.

mod cli;

/// jemalloc rather than glibc's malloc: it reuses freed megabyte-sized buffers (request bodies,
/// tensors) instead of mapping and faulting them in afresh, and its background threads return them to
/// the system once idle (docs/serving.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
