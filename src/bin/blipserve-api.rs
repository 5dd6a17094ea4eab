//! `blipserve-api`: the API tier's roles (`gateway`, `loadtest`) in a binary that does not link
//! libtorch: what the gateway image ships (as `blipserve`). Build it alone with
//! `cargo build --release --no-default-features --bin blipserve-api`.

use std::process::ExitCode;

use blipserve_api::roles::{self, ApiRole};
use blipserve_api::settings;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "blipserve",
    version,
    about = "blipserve's API tier: the gateway and the load tester (no model runtime)"
)]
struct Cli {
    #[command(subcommand)]
    role: ApiRole,
}

fn main() -> ExitCode {
    let cli: Cli = settings::parse_layered(roles::sections);
    roles::exit(cli.role.run())
}
