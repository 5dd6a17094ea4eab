//! One settings layer for every role.
//!
//! Each group of flags (listening, request limits, shutdown, logging, API keys) is declared once
//! here, with its environment twin and its one default, and flattened into every role that needs
//! it. A TOML file (`--config`) does not repeat them: its keys *are* the flags (`max_questions`
//! for `--max-questions`, `[cloudwatch] interval_s` for `--cloudwatch-interval-s`), and its values
//! become the flags' defaults before the command line is parsed ([`parse_layered`]). So a flag or
//! its environment variable beats the file, the file beats the built-in default, `--help` shows
//! the built-in default from the one place it is written, and a key that names no flag is refused.
//! Sections that are not flags (`[behaviors.NAME]`, `[[pools]]`) are read by the role that owns
//! them.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Command, ValueEnum};

use crate::frame::ImageLimits;

/// Limits on one detect request. Each violation is a 4xx with a JSON error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub max_questions: usize,
    pub max_question_chars: usize,
    pub request_timeout: Duration,
}

/// The limits as `GET /v1/info` shows them.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LimitsInfo {
    pub max_body_bytes: usize,
    pub max_questions: usize,
    pub max_question_chars: usize,
    /// The model's question length in tokens, [CLS] and [SEP] included (inference tier only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_question_tokens: Option<usize>,
    pub request_timeout_ms: u64,
    pub max_image_side: u32,
    pub max_image_pixels: u64,
}

impl LimitsInfo {
    pub fn new(limits: &RequestLimits, image: &ImageLimits, max_question_tokens: Option<usize>) -> LimitsInfo {
        LimitsInfo {
            max_body_bytes: limits.max_body_bytes,
            max_questions: limits.max_questions,
            max_question_chars: limits.max_question_chars,
            max_question_tokens,
            request_timeout_ms: limits.request_timeout.as_millis() as u64,
            max_image_side: image.max_width,
            max_image_pixels: image.max_pixels,
        }
    }
}

/// Where a role listens.
#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    /// Address to listen on (0.0.0.0 behind a load balancer; the default is safe on a laptop)
    #[arg(long, env = "BLIPSERVE_LISTEN", default_value = "127.0.0.1")]
    pub listen: IpAddr,

    /// Port to listen on
    #[arg(long, env = "BLIPSERVE_PORT", default_value_t = 8080)]
    pub port: u16,
}

impl ListenArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.port)
    }
}

/// What one detect request may be: the same in every role, so that a gateway and its workers
/// refuse the same requests with the same errors.
#[derive(Args, Debug, Clone)]
pub struct LimitsArgs {
    /// Deadline of one detect request, in ms, past which the client gets 504 (through a gateway:
    /// retries included, and a worker is given what is left)
    #[arg(long, env = "BLIPSERVE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Largest request body in bytes (a 4K JPEG, even base64-encoded in JSON)
    #[arg(long, env = "BLIPSERVE_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,

    /// Most questions (free text plus behaviours) per frame
    #[arg(long, env = "BLIPSERVE_MAX_QUESTIONS", default_value_t = 16)]
    pub max_questions: usize,

    /// Longest question in characters (the model's token limit also applies)
    #[arg(long, env = "BLIPSERVE_MAX_QUESTION_CHARS", default_value_t = 256)]
    pub max_question_chars: usize,

    /// Largest accepted image side in pixels, read from the image's header before decoding
    #[arg(long, env = "BLIPSERVE_MAX_IMAGE_SIDE", default_value_t = ImageLimits::DEFAULT.max_width)]
    pub max_image_side: u32,

    /// Largest accepted image area in pixels (8K: 7680 × 4320)
    #[arg(long, env = "BLIPSERVE_MAX_IMAGE_PIXELS", default_value_t = ImageLimits::DEFAULT.max_pixels)]
    pub max_image_pixels: u64,
}

impl LimitsArgs {
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_body_bytes: self.max_body_bytes,
            max_questions: self.max_questions.max(1),
            max_question_chars: self.max_question_chars.max(1),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }

    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_width: self.max_image_side,
            max_height: self.max_image_side,
            max_pixels: self.max_image_pixels,
        }
    }
}

/// How a role stops: on SIGTERM or SIGINT, /ready turns 503, after the drain delay the listener
/// stops accepting, and in-flight requests get the grace period to finish.
#[derive(Args, Debug, Clone)]
pub struct ShutdownArgs {
    /// After SIGTERM/SIGINT, how long /ready reports draining before the listener closes, in ms
    /// (set it to the load balancer's health-check interval × unhealthy threshold)
    #[arg(long, env = "BLIPSERVE_DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,

    /// After the listener closes, how long in-flight requests may take, in seconds
    #[arg(long, env = "BLIPSERVE_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,
}

impl ShutdownArgs {
    pub fn shutdown(&self) -> crate::http::Shutdown {
        crate::http::Shutdown {
            drain_delay: Duration::from_millis(self.drain_delay_ms),
            grace: Duration::from_secs(self.shutdown_grace_s),
        }
    }
}

/// How a role's server treats connections: a slow or idle client cannot hold one for long, and
/// there is a ceiling on how many are open.
#[derive(Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// How long a client may take to send a request's headers, in ms, counted from when the server
    /// starts waiting for them: the same bound closes an idle keep-alive connection. Above an ALB's
    /// 60 s idle timeout, so that the balancer closes idle connections first (a target that closes
    /// first causes 502s); lower it where no balancer sits in front
    #[arg(
        long,
        env = "BLIPSERVE_HEADER_READ_TIMEOUT_MS",
        default_value_t = 65_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_ms: u64,

    /// Open connections at most; beyond it new ones wait in the listen backlog until one closes
    #[arg(
        long,
        env = "BLIPSERVE_MAX_CONNECTIONS",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_connections: u64,
}

impl ConnectionArgs {
    pub fn limits(&self) -> crate::http::ConnectionLimits {
        crate::http::ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_connections as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format (RUST_LOG sets the level)
    #[arg(long, env = "BLIPSERVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the process's log subscriber, on stderr.
    pub fn init(&self) {
        init_logging(self.log_format);
    }
}

/// Logs on stderr at RUST_LOG's level (default `warn`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Bearer API keys accepted on /v1/detect (comma-separated); none: no authentication. Health,
    /// ready, metrics and docs stay open
    #[arg(
        long = "api-key",
        alias = "api-keys",
        env = "BLIPSERVE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = bearer_key
    )]
    pub api_keys: Vec<String>,
}

/// An empty or padded key (e.g. from a trailing comma) is a typo no client could match.
pub fn bearer_key(key: &str) -> Result<String, String> {
    if key.is_empty() || key.trim() != key {
        return Err("an API key is empty or has surrounding spaces (look for a stray comma)".into());
    }
    Ok(key.to_string())
}

/// The file named by `--config`: its flag keys were applied as defaults; its sections (tables
/// that are not flags) are the role's to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigFile {
    pub path: Option<PathBuf>,
    pub table: toml::Table,
}

impl ConfigFile {
    pub fn read(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let table = text.parse::<toml::Table>().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(ConfigFile { path: Some(path.to_path_buf()), table })
    }

    /// A section, deserialised (absent: its default).
    pub fn section<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> anyhow::Result<T> {
        match self.table.get(name) {
            None => Ok(T::default()),
            Some(value) => value.clone().try_into().map_err(|e| anyhow::anyhow!("{}: [{name}]: {e}", self.describe())),
        }
    }

    /// Everything but `section`: what a reload of that section alone leaves unchanged.
    pub fn without(&self, section: &str) -> toml::Table {
        let mut table = self.table.clone();
        table.remove(section);
        table
    }

    fn describe(&self) -> String {
        self.path.as_ref().map_or_else(|| "the configuration".into(), |p| p.display().to_string())
    }
}

/// Parses the command line in two passes: the first finds the running subcommand and its
/// `--config` file; the second parses again with the file's values as the flags' defaults.
/// `sections(subcommand)` names the file's tables that are not flags. Exits (as clap does) on
/// `--help`, a bad flag or a bad file.
pub fn parse_layered<C: clap::Parser>(sections: fn(&str) -> &'static [&'static str]) -> C {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match try_parse_layered::<C>(&argv, sections) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

pub fn try_parse_layered<C: clap::Parser>(
    argv: &[OsString],
    sections: fn(&str) -> &'static [&'static str],
) -> Result<C, clap::Error> {
    let command = C::command();
    let first = command.clone().try_get_matches_from(argv)?;
    // The running subcommand, one level down (roles are top-level subcommands).
    let Some((name, sub)) = first.subcommand() else { return C::from_arg_matches(&first) };
    let config = sub.try_get_one::<PathBuf>("config").ok().flatten().cloned();
    let Some(path) = config else { return C::from_arg_matches(&first) };
    let file =
        ConfigFile::read(&path).map_err(|e| command.clone().error(clap::error::ErrorKind::Io, format!("{e:#}")))?;
    let name = name.to_string();
    let mut error = None;
    let command = command.mut_subcommand(&name, |sub| match with_file_defaults(sub.clone(), &file, sections(&name)) {
        Ok(sub) => sub,
        Err(e) => {
            error = Some(e);
            sub
        }
    });
    if let Some(e) = error {
        return Err(C::command().error(clap::error::ErrorKind::InvalidValue, e));
    }
    let matches = command.try_get_matches_from(argv)?;
    C::from_arg_matches(&matches)
}

/// `command` with the file's values as its flags' defaults. Keys are flag names with `_` for
/// `-`; a table `[t]` holds the flags `--t-KEY` (its `enabled` key is the flag `--t`).
pub fn with_file_defaults(mut command: Command, file: &ConfigFile, sections: &[&str]) -> Result<Command, String> {
    let where_ = file.describe();
    for (key, value) in &file.table {
        if sections.contains(&key.as_str()) {
            continue;
        }
        match value {
            toml::Value::Table(table) => {
                for (inner, value) in table {
                    let long = if inner == "enabled" { key.clone() } else { format!("{key}-{inner}") };
                    command =
                        set_default(command, &long, value).map_err(|e| format!("{where_}: [{key}] {inner}: {e}"))?;
                }
            }
            _ => command = set_default(command, key, value).map_err(|e| format!("{where_}: {key}: {e}"))?,
        }
    }
    Ok(command)
}

fn set_default(command: Command, key: &str, value: &toml::Value) -> Result<Command, String> {
    let long = key.replace('_', "-");
    let id = command
        .get_arguments()
        .find(|a| {
            let aliases = a.get_all_aliases().unwrap_or_default();
            (a.get_long() == Some(long.as_str()) || aliases.contains(&long.as_str())) && a.get_id() != "config"
        })
        .map(|a| a.get_id().to_string())
        .ok_or_else(|| "unknown setting (the keys are the flags' names, `_` for `-`)".to_string())?;
    let values: Vec<String> = match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<_, _>>()?,
        other => vec![scalar(other)?],
    };
    Ok(command.mut_arg(id, |arg| arg.default_values(values)))
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("expected a value, found {}", other.type_str())),
    }
}

/// A Markdown table of a role's settings: flag, environment variable, default and help, each read
/// from the flag's one declaration. docs/configuration.md holds these tables; a test keeps them
/// equal to what this prints.
pub fn reference_table(command: &Command) -> String {
    let mut out = String::from("| flag | environment | default | what |\n| --- | --- | --- | --- |\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || long == "help" || long == "version" {
            continue;
        }
        let env = arg.get_env().map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = if defaults.is_empty() { "—".to_string() } else { format!("`{}`", defaults.join(",")) };
        let help = arg.get_help().map_or(String::new(), |h| h.to_string().replace('\n', " ").replace('|', "\\|"));
        out.push_str(&format!("| `--{long}` | {env} | {default} | {help} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        role: Role,
    }

    #[derive(Subcommand, Debug)]
    enum Role {
        Run(RunArgs),
    }

    #[derive(Args, Debug)]
    struct RunArgs {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(flatten)]
        limits: LimitsArgs,
        #[command(flatten)]
        keys: KeyArgs,
        /// A table's flag
        #[arg(long = "cloudwatch-interval-s", default_value_t = 60)]
        interval_s: u64,
        #[arg(long = "cloudwatch")]
        cloudwatch: bool,
    }

    fn sections(_: &str) -> &'static [&'static str] {
        &["behaviors"]
    }

    fn parse(file: &str, args: &[&str]) -> Result<RunArgs, clap::Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["x".into(), "run".into(), "--config".into(), path.into()];
        argv.extend(args.iter().map(OsString::from));
        try_parse_layered::<Cli>(&argv, sections).map(|c| match c.role {
            Role::Run(r) => r,
        })
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_the_defaults() {
        let file = "port = 9000\nmax_questions = 4\napi_keys = [\"a\", \"b\"]\n[cloudwatch]\nenabled = true\ninterval_s = 10\n[behaviors.x]\nquestion = \"q?\"\nthreshold = 0.5\n";
        let r = parse(file, &[]).unwrap();
        assert_eq!((r.listen.port, r.limits.max_questions, r.interval_s, r.cloudwatch), (9000, 4, 10, true));
        assert_eq!(r.keys.api_keys, ["a", "b"]);
        assert_eq!(r.limits.max_question_chars, 256, "the built-in default");
        let r = parse(file, &["--port", "7000"]).unwrap();
        assert_eq!(r.listen.port, 7000);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let err = parse("prot = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("prot") && err.contains("unknown setting"), "{err}");
        let err = parse("[cloudwatch]\nintervals = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("intervals"), "{err}");
        assert!(parse("port = \"eighty\"\n", &[]).is_err());
        assert!(parse("api_keys = [\"a\", \"\"]\n", &[]).is_err(), "an empty key");
        assert!(parse("port = [\n", &[]).is_err(), "not TOML");
    }

    #[test]
    fn the_reference_shows_each_default_once() {
        let table = reference_table(Cli::command().find_subcommand("run").unwrap());
        assert!(table.contains("| `--max-questions` | `BLIPSERVE_MAX_QUESTIONS` | `16` |"), "{table}");
        assert!(table.contains("| `--port` | `BLIPSERVE_PORT` | `8080` |"), "{table}");
    }
}
