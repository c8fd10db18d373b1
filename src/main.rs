//! The `switchyard` binary: parses the command line and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::auth;
use switchyard::config::ConfigSource;
use switchyard::{Gateway, GatewayOptions, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An OpenAI-compatible LLM gateway"
)]
struct Cli {
    /// Config file [default: config/switchyard.yaml if present, else the embedded default]
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway (the default)
    Serve {
        /// Listen address, overriding server.listen
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate the config, print a summary, exit non-zero listing every error found
    CheckConfig,
    /// Print the SHA-256 of a virtual key, as `auth.keys.<name>.sha256` wants it
    HashKey {
        /// The key (sk-sy-...)
        key: String,
    },
    /// Make a new random virtual key and print it with its SHA-256
    NewKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = ConfigSource::resolve(cli.config);
    match cli.command.unwrap_or(Command::Serve { listen: None }) {
        Command::Serve { listen } => serve(source, listen),
        Command::CheckConfig => check_config(&source),
        Command::HashKey { key } => {
            println!("{}", auth::hex(&auth::hash_key(&key)));
            ExitCode::SUCCESS
        }
        Command::NewKey => match auth::new_key() {
            Ok(key) => {
                println!(
                    "key:    {key}\nsha256: {}",
                    auth::hex(&auth::hash_key(&key))
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("switchyard: no randomness from the OS: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(source: ConfigSource, listen: Option<SocketAddr>) -> ExitCode {
    let _log_writer = switchyard::telemetry::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchyard: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let options = GatewayOptions {
            config: source,
            listen,
        };
        match Gateway::start(options).await {
            Ok(gateway) => {
                shutdown_signal().await;
                gateway.shutdown().await;
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("switchyard: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

fn check_config(source: &ConfigSource) -> ExitCode {
    match switchyard::check_config(source) {
        Ok(summary) => {
            println!("{source}: OK");
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}
