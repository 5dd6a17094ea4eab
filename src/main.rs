//! `blipserve`: every role in one binary. `serve` is the whole service; `worker` and `gateway`
//! are its two tiers; `loadtest`, `ask` and `throughput` measure and try it.

use std::process::ExitCode;

use blipserve_api::roles::{self, ApiRole};
use blipserve_api::settings::{self, init_logging, LogFormat};
use blipserve_model::roles::{ask, serve, throughput};
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "blipserve", version, about = "Pet-behaviour questions about camera frames, answered by BLIP VQA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API with an in-process pool of model replicas (API and inference in one process).
    Serve(Box<serve::ServeArgs>),
    /// The inference tier behind `blipserve gateway`: the same service, flags and endpoints as `serve`.
    Worker(Box<serve::ServeArgs>),
    #[command(flatten)]
    Api(ApiRole),
    /// Answer questions about one image and print one JSON object per question.
    Ask(ask::AskArgs),
    /// Answer frames in-process (no HTTP) in batches, and report frames per second.
    Throughput(throughput::ThroughputArgs),
    /// Print the settings reference of the roles (docs/configuration.md), from the flags' declarations.
    #[command(hide = true)]
    SettingsReference,
}

/// The configuration file's tables that are not flags, per role.
fn sections(role: &str) -> &'static [&'static str] {
    match role {
        "serve" | "worker" => serve::SECTIONS,
        other => roles::sections(other),
    }
}

fn main() -> ExitCode {
    let cli: Cli = settings::parse_layered(sections);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args, serve::Role::Serve),
        Command::Worker(args) => serve::run(*args, serve::Role::Worker),
        Command::Api(role) => role.run(),
        Command::Ask(args) => {
            init_logging(LogFormat::Text);
            ask::run(args)
        }
        Command::Throughput(args) => {
            init_logging(LogFormat::Text);
            throughput::run(args)
        }
        Command::SettingsReference => {
            let command = Cli::command();
            for role in ["serve", "gateway"] {
                if let Some(sub) = command.find_subcommand(role) {
                    println!("### `blipserve {role}`\n\n{}", settings::reference_table(sub));
                }
            }
            Ok(())
        }
    };
    roles::exit(result)
}
