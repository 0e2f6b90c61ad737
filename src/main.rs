fn main() -> std::process::ExitCode {
    jobgate::cli::main()
}
