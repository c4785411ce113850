//! The `shoal` binary: one executable, one subcommand per role.
//!
//! A role is a thin `main`: parse the command line, merge it over the config
//! file and the environment, wire the crates together, run.

mod config;
mod demo;
mod get;
mod sign;
mod warm;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_core::ByteSize;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A hybrid peer-to-peer CDN for large assets"
)]
struct Cli {
    /// How log lines (standard error) are written: `text` for people,
    /// `json` (one object a line) for log shippers. `SHOAL_LOG` sets the
    /// level filter (default `info`); `NO_COLOR` turns colour off.
    #[arg(
        long,
        global = true,
        env = "SHOAL_LOG_FORMAT",
        default_value = "text",
        value_enum
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// See [`Cli::log_format`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve files (and their manifests) under a directory: a static origin.
    Origin(config::OriginArgs),
    /// Write manifests (piece hashes) for every file under ROOT.
    Publish {
        /// The origin's root directory.
        root: PathBuf,
        /// Re-hash files even if their manifest looks current.
        #[arg(long)]
        force: bool,
        /// Piece size (a power of two, 256KiB..4MiB); chosen from each file's
        /// size when omitted.
        #[arg(long)]
        piece_size: Option<ByteSize>,
        /// A cache of the mesh to tell (repeat for fallbacks): every file
        /// published is revalidated across the mesh at once (a soft purge),
        /// instead of when its freshness runs out.
        #[arg(long = "notify")]
        notify: Vec<String>,
        /// The mesh's cluster secret (needed with --notify).
        #[arg(long, env = "SHOAL_CACHE_MESH__CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
    },
    /// Run an edge cache in front of an origin.
    Cache(Box<config::CacheArgs>),
    /// Choose, per request, the caches that together hold a delivery's
    /// committed bitrate at the lowest cost (joins the mesh's gossip as an
    /// observer; answers /plan, /explain and redirects).
    Selector(Box<config::SelectorArgs>),
    /// Drop a path or every path under a prefix from the whole mesh (or,
    /// with --soft, make it revalidate); signed with the cluster secret.
    Purge(warm::PurgeArgs),
    /// Change running caches' egress caps (signed with the cluster secret).
    SetEgress(warm::SetEgressArgs),
    /// Download an object from several caches at once (a selector's plan),
    /// verifying every piece, sharing pieces with other viewers in its
    /// swarm; resumes an interrupted download.
    Get(Box<get::GetArgs>),
    /// Fill objects into caches ahead of demand (all caches at once: they
    /// swarm, and the origin sends each object about once).
    Warm(warm::WarmArgs),
    /// Start an origin, four caches in two regions and a selector on
    /// loopback with sample content; download through them (one viewer,
    /// viewers everywhere, a warm-up, the selector's choices, a republish,
    /// a swarm of viewers sharing pieces while the caches fill the gap),
    /// print what moved where and keep serving until Ctrl-C.
    /// Print a signed URL for a delivery service that requires them
    /// (HMAC-SHA256 with a key id, an expiry, optionally a path prefix and
    /// a client address).
    Sign(sign::SignArgs),
    /// Print a shell completion script: `shoal completions bash >
    /// /etc/bash_completion.d/shoal` (also zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write manual pages (shoal.1, shoal-cache.1, …) into a directory:
    /// `shoal man /usr/local/share/man/man1`.
    Man {
        /// Directory to write the pages to (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Everything on loopback: an origin, four caches in two regions and a
    /// selector. Prints the selector's live dashboard URL first, then
    /// downloads through the caches (one viewer, viewers everywhere, a
    /// warmed release), shows the selector's choices, a multi-source get,
    /// a republish and a swarm of viewers sharing pieces — every byte
    /// checked — and then keeps a steady workload running (a live channel,
    /// paced viewers, a swarm every minute) until Ctrl-C.
    Demo {
        /// Size of the sample video file (the swarm's episode is 64 MiB).
        #[arg(long, default_value = "256MiB")]
        size: ByteSize,
        /// Exit after printing the summary instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Port for the first cache (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        cache_port: u16,
        /// Port for the selector and its dashboard (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        selector_port: u16,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The cause chain, one line, without a backtrace: these are
            // operator errors (bad config, busy port), not bugs.
            eprintln!("shoal: error: {}", describe(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause that the text so
/// far already spells out (some errors print their source themselves).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Origin(args) => run_origin(args).await,
            Command::Publish {
                root,
                force,
                piece_size,
                notify,
                cluster_secret,
            } => {
                // Checked before hashing anything.
                let secret = match (&notify[..], cluster_secret) {
                    ([], _) => None,
                    (_, Some(secret)) => Some(secret),
                    (_, None) => anyhow::bail!(
                        "--notify needs the cluster secret (--cluster-secret or SHOAL_CACHE_MESH__CLUSTER_SECRET)"
                    ),
                };
                let published = run_publish(root, force, piece_size)?;
                match secret {
                    Some(secret) => warm::notify_published(&notify, &secret, &published).await,
                    None => Ok(()),
                }
            }
            Command::Cache(args) => run_cache(*args).await,
            Command::Selector(args) => run_selector(*args).await,
            Command::Warm(args) => warm::run(args).await,
            Command::Get(args) => get::run(*args).await,
            Command::SetEgress(args) => warm::set_egress(args).await,
            Command::Purge(args) => warm::purge(args).await,
            Command::Demo {
                size,
                once,
                cache_port,
                selector_port,
            } => {
                let ports = demo::DemoPorts {
                    cache: cache_port,
                    selector: selector_port,
                };
                demo::run(size, once, ports).await
            }
            Command::Sign(args) => sign::run(args),
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut std::io::stdout());
                Ok(())
            }
            Command::Man { dir } => {
                use clap::CommandFactory;
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                clap_mangen::generate_to(Cli::command(), &dir)
                    .with_context(|| format!("writing manual pages to {}", dir.display()))?;
                println!("manual pages written to {}", dir.display());
                Ok(())
            }
        }
    })
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hyper=warn,reqwest=warn"));
    // Colour only for a person at a terminal: never in a log file or a
    // journal, and never with `NO_COLOR` set (no-color.org).
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// SIGTERM and Ctrl-C as a long-running role hears them: the first starts
/// a drain, the second stops at once. SIGHUP reopens the access log.
#[derive(Clone)]
struct Signals {
    count: tokio::sync::watch::Receiver<u32>,
}

impl Signals {
    /// Starts listening (inside the runtime). SIGHUP reopens `access_log`
    /// and reloads `tls`.
    fn install(
        access_log: Option<std::sync::Arc<shoal_server::AccessLog>>,
        tls: Option<std::sync::Arc<shoal_server::tls::TlsIdentity>>,
    ) -> Self {
        let (sender, count) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                shutdown_signal().await;
                let n = *sender.borrow() + 1;
                if n == 1 {
                    tracing::info!("stop signal: draining (send it again to stop at once)");
                    shoal_server::notify::stopping();
                } else {
                    tracing::warn!("second stop signal: stopping now");
                }
                if sender.send(n).is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hangup.recv().await.is_some() {
                if let Some(log) = &access_log {
                    tracing::info!("SIGHUP: reopening the access log");
                    log.reopen();
                }
                if let Some(tls) = &tls {
                    tls.reload_logged("SIGHUP");
                }
            }
        });
        Self { count }
    }

    /// Resolves at the `n`th stop signal.
    fn nth(&self, n: u32) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut count = self.count.clone();
        async move {
            let _ = count.wait_for(|c| *c >= n).await;
        }
    }
}

/// ` tls=https://ADDR` for a banner, when a role serves HTTPS too.
fn https_note(addr: Option<std::net::SocketAddr>) -> String {
    addr.map(|a| format!(" tls=https://{a}"))
        .unwrap_or_default()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn run_origin(args: config::OriginArgs) -> anyhow::Result<()> {
    let print = args.print_config;
    let config = config::origin_config(args)?;
    if print {
        print!("{}", config::printable(&config)?);
        return Ok(());
    }
    let server = shoal_origin::OriginServer::bind(config)
        .await
        .context("starting the origin")?;
    let signals = Signals::install(server.access_log().cloned(), server.tls_identity());
    tokio::spawn(shoal_server::notify::follow(server.lifecycle()));
    // Tests and scripts read this line to learn the port.
    println!(
        "shoal origin listening on http://{}{}",
        server.local_addr(),
        https_note(server.tls_addr())
    );
    let access_log = server.access_log().cloned();
    server
        .with_force_stop(signals.nth(2))
        .serve(signals.nth(1))
        .await;
    if let Some(log) = access_log {
        log.close();
    }
    Ok(())
}

async fn run_cache(args: config::CacheArgs) -> anyhow::Result<()> {
    let print = args.print_config;
    let config = config::cache_config(args)?;
    if print {
        print!("{}", config::printable(&config)?);
        return Ok(());
    }
    let origin = config.origin.clone();
    let cache = shoal_cache::BoundCache::bind(config)
        .await
        .context("starting the cache")?;
    // Tests and scripts read this line to learn the ports.
    match cache.service.mesh() {
        Some(mesh) => println!(
            "shoal cache listening on http://{} (origin {origin}) node={} gossip={}{}",
            cache.local_addr,
            mesh.self_id(),
            mesh.node.gossip_addr(),
            https_note(cache.tls_addr())
        ),
        None => println!(
            "shoal cache listening on http://{} (origin {origin}){}",
            cache.local_addr,
            https_note(cache.tls_addr())
        ),
    }
    let signals = Signals::install(cache.service.access_log().cloned(), cache.tls_identity());
    tokio::spawn(shoal_server::notify::follow(
        cache.service.lifecycle().clone(),
    ));
    let access_log = cache.service.access_log().cloned();
    cache
        .with_force_stop(signals.nth(2))
        .run(signals.nth(1))
        .await;
    if let Some(log) = access_log {
        log.close();
    }
    Ok(())
}

async fn run_selector(args: config::SelectorArgs) -> anyhow::Result<()> {
    let print = args.print_config;
    let config = config::selector_config(args)?;
    if print {
        print!("{}", config::printable(&config)?);
        return Ok(());
    }
    let services = config.effective_services();
    let selector = shoal_selector::BoundSelector::bind(config)
        .await
        .context("starting the selector")?;
    // Tests and scripts read this line to learn the ports.
    println!(
        "shoal selector listening on http://{} gossip={}{} services={}",
        selector.local_addr,
        selector.gossip_addr(),
        https_note(selector.tls_addr()),
        services
            .iter()
            .map(|s| format!(
                "{}({}{} @ {} Mbit/s x{})",
                s.name,
                s.hosts.join("|"),
                s.path_prefix,
                s.bitrate_mbps,
                s.headroom
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let signals = Signals::install(
        selector.selector.access_log().cloned(),
        selector.tls_identity(),
    );
    tokio::spawn(shoal_server::notify::follow(
        selector.selector.lifecycle().clone(),
    ));
    let access_log = selector.selector.access_log().cloned();
    selector
        .with_force_stop(signals.nth(2))
        .run(signals.nth(1))
        .await;
    if let Some(log) = access_log {
        log.close();
    }
    Ok(())
}

/// Publishes `root`; returns the request paths of the files published.
fn run_publish(
    root: PathBuf,
    force: bool,
    piece_size: Option<ByteSize>,
) -> anyhow::Result<Vec<String>> {
    let piece_size = piece_size
        .map(|s| shoal_core::PieceSize::from_bytes(s.0))
        .transpose()
        .context("--piece-size")?;
    let options = shoal_origin::PublishOptions {
        force,
        piece_size,
        ..Default::default()
    };
    let report = shoal_origin::publish(&root, &options)
        .with_context(|| format!("publishing {}", root.display()))?;
    println!("{report}");
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} file(s) could not be published",
        report.failed.len()
    );
    Ok(report.published_paths)
}
