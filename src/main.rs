//! `blipserve`: every role in one binary. `serve` is the whole service; `worker` and `gateway`
//! are its two tiers; `loadtest`, `ask` and `throughput` measure and try it.

use std::process::ExitCode;

use blipserve_api::roles::{self, ApiRole};
use blipserve_api::settings::{self, init_logging, LogFormat};
use blipserve_model::roles::{ask, serve, throughput};
use clap::{CommandFactory, Parser, Subcommand};

/// jemalloc serves every allocation in the process: Rust's, and libtorch's too, since its symbols
/// are unprefixed (`malloc`, `posix_memalign`, ...), the linker exports them (the libraries on the
/// link line call them) and the executable's come first when libraries bind theirs. With glibc's
/// allocator a base-size server held 130–270 MB more after a load test than when it became ready
/// (freed activations kept in per-thread arenas); with jemalloc about 120 MB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (`MALLOC_CONF` in the environment adds to them). Its default gives requests
/// over 8 MiB an arena that keeps no freed pages; a base-size frame's attention scores are 16 MB,
/// so every layer faulted fresh pages in and the server ran up to 20 % slower than with glibc's
/// allocator. With the threshold off they are reused like any other.
#[export_name = "malloc_conf"]
static MALLOC_CONF: &[u8; 21] = b"oversize_threshold:0\0";

/// Hands every arena's free pages back to the OS (what a replica does after its warm-up and when
/// it idles).
fn purge_free_pages() {
    // MALLCTL_ARENAS_ALL (4096) names every arena.
    let name = c"arena.4096.purge";
    // SAFETY: a purge reads and writes no value (all pointers null); the name is NUL-terminated.
    unsafe {
        tikv_jemalloc_sys::mallctl(name.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0);
    }
}

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
    blipserve_model::engine::set_memory_release(purge_free_pages);
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
