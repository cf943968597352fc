//! The `kiln` command: parses arguments, runs the library, prints errors as one line.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kiln::cli::Cli::parse();
    let run = kiln::output::remove_temporaries_on_signals().and_then(|()| kiln::run::run(cli));
    match run {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kiln: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
