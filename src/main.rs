//! The `mfoundry` binary: parse the command line, load settings, run.

use std::process::ExitCode;

use clap::Parser;
use mfoundry::cli::{Cli, Command, run_send};
use mfoundry::config::Settings;

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mfoundry: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = match Settings::from_env() {
                Ok(settings) => settings,
                Err(errors) => {
                    eprint!("mfoundry: {errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            mfoundry::telemetry::init(settings.log_format);
            match runtime.block_on(mfoundry::app::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "mfoundry stopped");
                    eprintln!("mfoundry: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Send(args) => {
            let mut stdout = std::io::stdout();
            match runtime.block_on(run_send(&args, &mut stdout)) {
                Ok(summary) if summary.all_accepted() => ExitCode::SUCCESS,
                Ok(summary) => {
                    eprintln!(
                        "mfoundry send: {} of {} messages were not accepted",
                        summary.sent - summary.accepted,
                        summary.sent
                    );
                    ExitCode::from(1)
                }
                Err(error) => {
                    eprintln!("mfoundry send: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
