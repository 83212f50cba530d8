//! The `whatsnap` program, built inside this package so that its end-to-end tests start a binary
//! of the current code (cargo gives tests the paths of their own package's binaries only).

fn main() -> std::process::ExitCode {
    whatsnap::main()
}
