//! The `edgesync` binary: parses the command line and hands off to [`edgesync::cli`].

fn main() -> std::process::ExitCode {
    edgesync::cli::main()
}
