//! The command lines of the API tier's roles: `blipserve gateway` and `blipserve loadtest`. Each
//! role's flags are the shared groups of [`crate::settings`] plus its own.

pub mod gateway;
pub mod loadtest;

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

use std::process::ExitCode;

use clap::Subcommand;

use crate::settings::{init_logging, LogFormat};

/// The API tier's roles, as subcommands: the `blipserve-api` binary's whole command line, and
/// flattened into `blipserve`'s.
#[derive(Subcommand)]
pub enum ApiRole {
    /// The API tier: check detect requests and forward them to weighted pools of workers.
    Gateway(Box<gateway::GatewayArgs>),
    /// Drive a detect endpoint with frames at a fixed concurrency or arrival rate, and report.
    Loadtest(Box<loadtest::LoadtestArgs>),
}

impl ApiRole {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            ApiRole::Gateway(args) => gateway::run(*args),
            ApiRole::Loadtest(args) => {
                init_logging(LogFormat::Text);
                loadtest::run(*args)
            }
        }
    }
}

/// The configuration file's tables that are not flags, for the API tier's roles.
pub fn sections(role: &str) -> &'static [&'static str] {
    if role == "gateway" {
        gateway::SECTIONS
    } else {
        &[]
    }
}

/// The process's exit: 0, or 1 with the error's chain on stderr.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
