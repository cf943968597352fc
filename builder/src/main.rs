//! The `kiln` command: parses arguments, runs the library, prints errors as one line.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kiln::cli::Cli::parse();
    match kiln::run::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kiln: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
