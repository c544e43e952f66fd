//! The `edgesync` CLI, built inside the test crate so crash tests can spawn and
//! SIGKILL a real gateway process (`CARGO_BIN_EXE_edgesync-test-gateway`).

fn main() -> std::process::ExitCode {
    edgesync::cli::main()
}
