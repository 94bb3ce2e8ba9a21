//! The `membergate` binary: parse the command line and dispatch.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use membergate::cli::{Cli, Command};
use membergate::config::{Config, ConfigError};
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

/// Every problem `serve` would refuse the file for, in one run: its values,
/// and the files, keys and secrets they name.
fn check_config(path: &Path) -> ExitCode {
    let built = Config::check(path).and_then(|checked| Runtime::build_checked(checked, false));
    match built {
        Ok(runtime) => {
            let config = &runtime.config;
            let routes: usize = config.sites.iter().map(|s| s.routes.len()).sum();
            let sites = config.sites.len();
            println!("{}: ok ({sites} sites, {routes} routes)", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => invalid(path, &e),
    }
}

fn invalid(path: &Path, error: &ConfigError) -> ExitCode {
    eprintln!("{}: invalid configuration\n{error}", path.display());
    ExitCode::from(2)
}

fn serve(path: &Path) -> ExitCode {
    let checked = match Config::check(path) {
        Ok(checked) => checked,
        Err(e) => return invalid(path, &e),
    };
    // Before building: a generated dev certificate is logged.
    let _log_guard = membergate::telemetry::init(&checked.config.log);
    let built = match Runtime::build_checked(checked, true) {
        Ok(built) => built,
        Err(e) => return invalid(path, &e),
    };
    let workers = built.config.server.workers;
    let runtime = match async_runtime(workers) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!(
                "membergate: cannot start the async runtime with server.workers = {workers}: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let membership = Membership::open(&built.config).await?;
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

/// The tokio runtime for `workers` data-plane threads (0: one per core).
/// One worker: a current-thread runtime, with no work-stealing machinery
/// between the tasks of a connection and its upstream.
fn async_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    if workers > 1 {
        builder.worker_threads(workers);
    }
    // Tokio panics when the system refuses it a thread (a process or memory
    // limit), and unwinding then waits forever for the threads it started:
    // a panic while they start ends the process, with the reason.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let reason = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        eprintln!(
            "membergate: cannot start the async runtime with server.workers = {workers}: {reason}"
        );
        std::process::exit(1);
    }));
    let runtime = builder.build();
    std::panic::set_hook(default_hook);
    runtime
}
