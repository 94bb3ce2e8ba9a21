//! The `membergate` binary: parse the command line and dispatch.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use membergate::cli::{Cli, Command};
use membergate::config::Config;
use membergate::gateway::{Gateway, Runtime};
use membergate::portal::Membership;
use membergate::server::{self, Listeners};

/// mimalloc instead of glibc's malloc: proxying allocates and frees many
/// short-lived buffers across threads (see docs/decisions/0011-allocator.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config } => serve(&config.config),
        Command::CheckConfig { file, config } => check_config(&file.unwrap_or(config.config)),
        Command::Health { config } => membergate::admin::probe::run(&config.config),
        admin => membergate::admin::commands::run(admin),
    }
}

fn check_config(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: invalid configuration\n{e}", path.display());
            return ExitCode::from(2);
        }
    };
    let routes: usize = config.sites.iter().map(|s| s.routes.len()).sum();
    let sites = config.sites.len();
    if let Some(Err(e)) = membergate::portal::membership::secret_from_env() {
        eprintln!(
            "{}: invalid configuration
{e}",
            path.display()
        );
        return ExitCode::from(2);
    }
    match Runtime::build(config, false) {
        Ok(_) => {
            println!("{}: ok ({sites} sites, {routes} routes)", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid configuration\n{e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: invalid configuration\n{e}", path.display());
            return ExitCode::from(2);
        }
    };
    let _log_guard = membergate::telemetry::init(&config.log);
    // One worker: a current-thread runtime, with no work-stealing machinery
    // between the tasks of a connection and its upstream.
    let mut runtime = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all();
    if config.server.workers > 1 {
        runtime.worker_threads(config.server.workers);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let membership = Membership::open(&config).await?;
        let built = Runtime::build(config, true)?;
        let gateway = Arc::new(Gateway::new(built, path, membership)?);
        let listeners = Listeners::bind(&gateway).await?;
        let signals = server::Signals::install()?;
        if let Some(addr) = listeners.https.as_ref().and_then(|l| l.local_addr().ok()) {
            gateway.set_https_port(addr.port());
        }
        let addresses = listeners.describe();
        tracing::info!(%addresses, version = env!("CARGO_PKG_VERSION"), "membergate listening");
        // A stable line on stdout that scripts and tests wait for.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "membergate listening {addresses}").and_then(|()| stdout.flush());
        server::run(gateway, listeners, signals).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("membergate: {e}");
            ExitCode::FAILURE
        }
    }
}
