//! The `fulcrum` command: run, check, demo, backend.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use fulcrum::config::{self, Config};
use fulcrum::server::Server;
use fulcrum::{backend, observe};

mod allocator;

// mimalloc (see allocator.rs): fewer instructions per allocation than glibc's malloc on the
// request path (a few small allocations per request).
#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

#[derive(Parser)]
#[command(name = "fulcrum", version, about = "A layer-7 HTTP load balancer and reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run with a config file.
    Run {
        #[arg(short, long, default_value = "fulcrum.toml")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 with a summary, or 1 with every error.
    Check {
        #[arg(short, long, default_value = "fulcrum.toml")]
        config: PathBuf,
    },
    /// Zero-config showcase: three built-in backends behind a balancer on 127.0.0.1:8080.
    Demo,
    /// The built-in test backend.
    Backend {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => run(&config),
        Command::Demo => demo(),
        Command::Backend { listen, name } => {
            observe::init_logging(None);
            control_runtime().and_then(|rt| rt.block_on(backend::run(listen, name)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fulcrum: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            println!("{}", config::summary(&cfg));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => anyhow::bail!("invalid config:\n{errors}"),
    };
    observe::init_logging(cfg.global.log_level.as_deref());
    serve(cfg, control_runtime()?)
}

/// Starts the balancer and blocks until it has shut down after a signal.
fn serve(cfg: Config, runtime: tokio::runtime::Runtime) -> anyhow::Result<()> {
    raise_open_files_limit();
    let server = Server::start(cfg)?;
    runtime.block_on(wait_for_shutdown_signal(&server))?;
    drain(server, &runtime);
    Ok(())
}

/// Shuts the server down gracefully; a second Ctrl-C meanwhile exits at once.
fn drain(server: Server, runtime: &tokio::runtime::Runtime) {
    runtime.spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("second interrupt: exiting now");
            std::process::exit(130);
        }
    });
    let _ = runtime.block_on(async move { tokio::task::spawn_blocking(move || server.shutdown()).await });
}

/// Every client connection, upstream connection and tunnel is a descriptor:
/// like HAProxy, lift the soft limit to the hard one instead of failing
/// accepts at the usual 1024.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
}

fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Waits for SIGTERM or SIGINT; reloads the config on each SIGHUP meanwhile.
async fn wait_for_shutdown_signal(server: &Server) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                // The outcome is logged (and counted) by the reload itself.
                let control = server.control().clone();
                let _ = tokio::task::spawn_blocking(move || control.reload()).await;
            }
        }
    }
}

fn demo() -> anyhow::Result<()> {
    observe::init_logging(None);
    let runtime = control_runtime()?;
    let backends = runtime.block_on(async {
        let mut backends = Vec::new();
        for name in ["alpha", "beta", "gamma"] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            backends.push(backend::spawn(listener, name));
        }
        anyhow::Ok(backends)
    })?;
    let servers = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
[global]
shutdown_grace = "5s"
admin_listen = "127.0.0.1:9900"
workers = 1          # one worker: round robin is easy to see request by request

[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
expose_upstream = true

[[routes]]
name = "lb-health"
path_prefix = "/lb-health"
respond = {{ status = 200, body = "healthy\n" }}

[[routes]]
name = "app"
upstream = "app"

[upstreams.app]
servers = [ {servers} ]
"#
    );
    let cfg = config::parse(&text, "demo", &|name| std::env::var(name).ok())
        .map_err(|errors| anyhow::anyhow!("demo config is invalid:\n{errors}"))?;
    let server = Server::start(cfg)?;
    let addr = server.addrs()[0].1;
    println!("Fulcrum demo: a balancer on http://{addr} in front of three built-in backends:");
    for b in &backends {
        println!("  {:<6} http://{}", b.name, b.addr);
    }
    println!();
    println!("Try:");
    println!("  curl -i http://{addr}/                  # X-Upstream shows which backend answered");
    println!("  for i in 1 2 3 4 5 6; do curl -s http://{addr}/; done   # round robin");
    println!("  curl -s http://{addr}/echo              # what the backend received (X-Forwarded-*, X-Request-Id)");
    println!("  curl -i http://{addr}/delay/500          # a slow answer");
    println!("  curl -i http://{addr}/lb-health          # answered by the balancer itself");
    println!("  curl -s --http2-prior-knowledge http://{addr}/   # HTTP/2 (h2c) on the same listener");
    println!("  websocat ws://{addr}/ws                 # WebSocket echo through the balancer (any WebSocket client)");
    println!("  curl -s http://127.0.0.1:9900/api/upstreams   # admin API: servers, state, in-flight, latency");
    println!("  open http://127.0.0.1:9900/                    # the live dashboard, in a browser");
    println!();
    println!("Ctrl-C to stop.");
    runtime.block_on(wait_for_shutdown_signal(&server))?;
    drain(server, &runtime);
    drop(backends);
    Ok(())
}
