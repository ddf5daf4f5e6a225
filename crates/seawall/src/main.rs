//! The `seawall` command: `run`, `check`, `demo` and `origin`. Thin by design: behaviour lives in the
//! libraries (`seawall-config`, `seawall-http`) so tests and benches reach it without the CLI.

mod alloc;
mod capacity;
mod demo;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use seawall_config::{Config, LogFormat};
use seawall_http::Gateway;

#[derive(Parser)]
#[command(name = "seawall", version, about = "A gateway that keeps an API alive through a crisis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "seawall.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0 when valid, else print every error and exit 1.
    Check {
        /// Configuration file.
        #[arg(long, short, default_value = "seawall.toml")]
        config: PathBuf,
    },
    /// Start a demo origin (ports 9000 and 9001) and the gateway in front of it.
    Demo {
        /// Configuration for the gateway (default: examples/seawall.toml, or a built-in copy).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run only the demo origin, for drills and benchmarks (no gateway).
    Origin {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// Capacity mode: serve at most this many requests at once; the others wait inside.
        #[arg(long)]
        slots: Option<usize>,
        /// Capacity mode: how long each request takes ("20ms").
        #[arg(long, default_value = "20ms")]
        service_time: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => match load(&config) {
            Some(c) => run(c, Some(config), false),
            None => ExitCode::FAILURE,
        },
        Command::Demo { config } => {
            let default = Path::new("examples/seawall.toml");
            let (parsed, path) = match config {
                Some(path) => (load(&path), Some(path)),
                None if default.exists() => (load(default), Some(default.to_path_buf())),
                None => (
                    report(seawall_config::parse(
                        demo::EXAMPLE_CONFIG,
                        "examples/seawall.toml (built in)",
                    )),
                    None,
                ),
            };
            match parsed {
                Some(c) => run(c, path, true),
                None => ExitCode::FAILURE,
            }
        }
        Command::Origin { listen, slots, service_time } => origin(listen, slots, &service_time),
    }
}

fn origin(listen: std::net::SocketAddr, slots: Option<usize>, service_time: &str) -> ExitCode {
    let service = match seawall_config::parse_duration(service_time) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            eprintln!("--service-time: expected a duration like \"20ms\", got {service_time:?}");
            return ExitCode::FAILURE;
        }
    };
    let capacity = slots.map(|n| capacity::Capacity::new(n, service));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo::run_origin(listen, capacity)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match seawall_config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} routes, {} upstreams, {} warning(s))",
                path.display(),
                c.routes.len(),
                c.upstreams.len(),
                c.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{} error(s)", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Option<Config> {
    report(seawall_config::load(path))
}

fn report(result: Result<Config, seawall_config::ConfigErrors>) -> Option<Config> {
    result
        .map_err(|errors| {
            for e in &errors.0 {
                eprintln!("{e}");
            }
        })
        .ok()
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEAWALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Colour codes only for a terminal: in a file or a log collector they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: Config, path: Option<PathBuf>, with_demo: bool) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    seawall_http::server::set_housekeeping_hook(alloc::release_freed_memory);
    let result: anyhow::Result<bool> = runtime.block_on(async move {
        let origin = if with_demo { Some(demo::start_origins(&config).await?) } else { None };
        let gateway = Gateway::start(config, path).await?;
        if let Some(origins) = &origin {
            demo::print_urls(gateway.listen_addr(), gateway.admin_addr(), origins);
            if let Some(egress) = gateway.egress_addr() {
                demo::print_egress(egress);
            }
        }
        Ok(gateway.run_until_signal().await?)
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            // Drain timed out: still a clean, deliberate exit.
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seawall: {e:#}");
            ExitCode::FAILURE
        }
    }
}
