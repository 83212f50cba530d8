fn main() -> std::process::ExitCode {
    whatsnap::main()
}
