//! The `xapi-stream` binary: see [`xapi_stream::cli`].

/// mimalloc instead of glibc's malloc: the write path allocates and frees small buffers for
/// every request (headers, body, JSON values, Redis arguments), and glibc's allocator showed at
/// ≈ 9 % of the engine's CPU in `perf` (`benches/README.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    xapi_stream::cli::main()
}
