//! The `mfoundry` binary: parse the command line, load the configuration, run.

use std::process::ExitCode;

use clap::Parser;
use std::io::stdout;

use mfoundry::cli::{
    Cli, Command, ConfigArgs, ConfigCommand, admin, run_bench, run_dlq, run_send, run_store,
};
use mfoundry::config::Config;

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// The static (musl) build, as in the container image, uses mimalloc: musl's own allocator
/// costs about 40 % of throughput under concurrent load (docs/performance.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    match cli.command.unwrap_or(Command::Serve(ConfigArgs::default())) {
        Command::Serve(args) => {
            let config = match Config::load(args.config.as_deref()) {
                Ok(config) => config,
                Err(errors) => {
                    eprint!("mfoundry: {errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let compiled = match config.compile() {
                Ok(compiled) => compiled,
                Err(errors) => {
                    eprint!("mfoundry: {errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if let Err(error) = check_tokens_file(&config) {
                eprintln!("mfoundry: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            mfoundry::telemetry::init(config.settings.log_format);
            // As `check` prints them: expressions that load but now mean something else.
            for warning in compiled
                .rules
                .warnings()
                .iter()
                .chain(compiled.transforms.warnings())
            {
                tracing::warn!(warning = %warning, "an expression loads, but its meaning changed");
            }
            let pull = config.settings.metrics_addr.is_some();
            match runtime.block_on(async { mfoundry::telemetry::metrics::init(pull) }) {
                Ok(installed) => {
                    if let Some(protocol) = installed.otlp {
                        tracing::info!(protocol = %protocol, "exporting metrics over OTLP")
                    }
                }
                Err(error) => {
                    eprintln!("mfoundry: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            match runtime.block_on(mfoundry::app::run(config, compiled)) {
                Ok(mfoundry::app::Stopped::Drained) => ExitCode::SUCCESS,
                Ok(mfoundry::app::Stopped::DrainCutShort) => {
                    ExitCode::from(mfoundry::app::EXIT_DRAIN_CUT_SHORT)
                }
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "mfoundry stopped");
                    eprintln!("mfoundry: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => check(&args),
        Command::Test(args) => interface_tests(&args),
        Command::Config {
            command: ConfigCommand::Schema,
        } => {
            let schema = mfoundry::config::schema::schema();
            match serde_json::to_string_pretty(&schema) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("mfoundry: cannot print the schema: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench(args) => {
            let mut stdout = std::io::stdout();
            match runtime.block_on(run_bench(&args, &mut stdout)) {
                Ok(report) if report.failed == 0 => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(error) => {
                    eprintln!("mfoundry bench: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Dlq(args) => finish("dlq", runtime.block_on(run_dlq(&args, &mut stdout()))),
        Command::Store(args) => finish("store", runtime.block_on(run_store(&args, &mut stdout()))),
        Command::Stats(api) => finish("stats", runtime.block_on(admin::stats(&api, &mut stdout()))),
        Command::Health(args) => finish(
            "health",
            runtime.block_on(mfoundry::cli::client::health(&args, &mut stdout())),
        ),
        Command::Messages { api, command } => finish(
            "messages",
            runtime.block_on(admin::messages(&api, &command, &mut stdout())),
        ),
        Command::Pause { api, connector } => finish(
            "pause",
            runtime.block_on(admin::control(&api, &connector, true, &mut stdout())),
        ),
        Command::Resume { api, connector } => finish(
            "resume",
            runtime.block_on(admin::control(&api, &connector, false, &mut stdout())),
        ),
        Command::Audit {
            api,
            offline,
            command,
        } => finish(
            "audit",
            runtime.block_on(admin::audit(&api, offline, &command, &mut stdout())),
        ),
        Command::Logs { api, limit } => finish(
            "logs",
            runtime.block_on(admin::logs(&api, limit, &mut stdout())),
        ),
        Command::Token { command } => finish("token", admin::token(&command, &mut stdout())),
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

/// A set `ADMIN_TOKENS_FILE` must be readable and well formed (checked before anything is
/// opened or bound, like the rest of the configuration).
fn check_tokens_file(config: &Config) -> Result<(), String> {
    let Some(path) = &config.settings.admin_tokens_file else {
        return Ok(());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read ADMIN_TOKENS_FILE {}: {error}", path.display()))?;
    mfoundry::admin::TokenStore::parse(&text, path).map(|_| ())
}

/// Exit with the command's code, or 2 and the error on stderr.
fn finish(command: &str, result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("mfoundry {command}: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// `mfoundry test`: load and compile as `check` does, then run the interface cases.
fn interface_tests(args: &mfoundry::cli::interfaces::TestArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("mfoundry test: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let compiled = match config.compile() {
        Ok(compiled) => compiled,
        Err(errors) => {
            eprint!("mfoundry test: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut stdout = std::io::stdout();
    match mfoundry::cli::interfaces::run(&config, compiled, args, &mut stdout) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("mfoundry test: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// `mfoundry check`: load, validate, compile; print every problem.
fn check(args: &ConfigArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("mfoundry check: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = check_tokens_file(&config) {
        eprintln!("mfoundry check: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match config.compile() {
        Ok(compiled) => {
            // Expressions that load but now mean something else: on stderr, exit 0.
            for warning in compiled
                .rules
                .warnings()
                .iter()
                .chain(compiled.transforms.warnings())
            {
                eprintln!("mfoundry check: warning: {warning}");
            }
            let source = config.file.as_ref().map_or_else(
                || "no configuration file".to_owned(),
                |path| path.display().to_string(),
            );
            use mfoundry::units::count;
            println!(
                "ok: {source}: {}, {}, {}, {}, data in {}",
                count(config.connectors.len() as u64, "connector", "connectors"),
                count(
                    compiled.rules.rule_count() as u64,
                    "validation rule",
                    "validation rules"
                ),
                count(
                    compiled.transforms.step_count() as u64,
                    "transform step",
                    "transform steps"
                ),
                count(config.tables.len() as u64, "table", "tables"),
                config.settings.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("mfoundry check: {errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
