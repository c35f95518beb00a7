//! The `xapi-stream` binary: see [`xapi_stream::cli`].
fn main() -> std::process::ExitCode {
    xapi_stream::cli::main()
}
