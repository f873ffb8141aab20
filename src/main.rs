use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kbuild::cli::Cli::parse();
    kbuild::logging::init(cli.verbose, cli.quiet);
    let code = kbuild::commands::run(cli);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
