//! `shoal get URL`: download one object from several caches at once (the
//! plan of the selector at URL, or URL itself and `--mirror`s), with a
//! progress line, and a summary at the end.

use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct GetArgs {
    /// The object's URL on a selector (or on a cache, or any HTTP server
    /// with shoal manifests), e.g. http://selector:8070/video/film.mp4;
    /// a signed URL (`shoal sign`) keeps its signature on every request.
    pub url: String,
    /// Where to write it (default: the last path segment, here).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Another URL of the same object to pull from (repeat for several);
    /// one without a signature takes URL's.
    #[arg(long = "mirror")]
    pub mirrors: Vec<String>,
    /// Committed bitrate to hold, Mbit/s (default: the delivery service's);
    /// below it, the selector is asked for more sources.
    #[arg(long)]
    pub bitrate: Option<f64>,
    /// No progress line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Longest wait for a response head or the next body chunk, ms.
    #[arg(long, default_value_t = 10_000)]
    pub read_timeout_ms: u64,
    /// Stream mode: write the bytes to stdout in order as they verify
    /// (pipe into a player: `shoal get --stream URL | mpv -`). The file is
    /// kept only with -o. The summary goes to stderr.
    #[arg(long)]
    pub stream: bool,
    /// Stream mode for players that want a URL: serve the object on this
    /// local address (ranges and seeking work) while it downloads, and
    /// until Ctrl-C after, e.g. 127.0.0.1:8888.
    #[arg(long, conflicts_with = "stream")]
    pub serve: Option<std::net::SocketAddr>,
    /// Stream mode: seconds of playback buffered before the (virtual)
    /// player starts; rebuffering is counted after that.
    #[arg(long, default_value_t = 2.0)]
    pub buffer_s: f64,
    /// Connect from this local address (a host with several).
    #[arg(long)]
    pub local_address: Option<std::net::IpAddr>,
    /// Certificates (PEM) to trust for https:// besides the system's roots
    /// (a private CA).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Do not join the viewers' swarm (caches only).
    #[arg(long)]
    pub no_peers: bool,
    /// Accept peer connections on this address (default: an ephemeral
    /// port on --local-address, or on every interface). Behind NAT peers
    /// still download and upload over the connections they open.
    #[arg(long)]
    pub peer_listen: Option<std::net::SocketAddr>,
    /// Upload to peers at most this fast, Mbit/s (decimals allowed).
    #[arg(long, conflicts_with = "no_upload")]
    pub upload_mbps: Option<f64>,
    /// Never upload to peers (metered links); still download from them.
    #[arg(long)]
    pub no_upload: bool,
    /// Keep seeding to peers this long after the download, e.g. 90s, 10m,
    /// 1h (default: leave at once).
    #[arg(long, value_parser = parse_duration)]
    pub seed_for: Option<std::time::Duration>,
    /// Downloads: hold this rate, Mbit/s, with the caches filling only what
    /// peers leave (default: as fast as every source allows).
    #[arg(long)]
    pub target_mbps: Option<f64>,
}

/// `90s`, `10m`, `1h`, `250ms` or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 10m or 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{unit}` is not a unit (ms, s, m, h)")),
    };
    if !seconds.is_finite() || !(0.0..=7.0 * 24.0 * 3600.0).contains(&seconds) {
        return Err(format!("`{text}` is not within 0 s and 7 days"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

pub async fn run(args: GetArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let url = shoal_client::discover::ObjectUrl::parse(&args.url)?;
    let (temporary, output) = output_path(&args, &url)?;
    let options = get_options(&args, &url, output.clone())?;
    let terminal = std::io::stderr().is_terminal();
    let quiet = args.quiet;
    let mut last_line = std::time::Instant::now();
    let name = output.display().to_string();
    let summary = shoal_client::get(options, |p| {
        if quiet {
            return;
        }
        // Not a terminal: a line every 2 s instead of a redrawn one.
        if !terminal && last_line.elapsed().as_secs() < 2 {
            return;
        }
        last_line = std::time::Instant::now();
        print_progress(terminal, &progress_line(&name, p));
    })
    .await
    .with_context(|| format!("getting {}", args.url));
    drop(temporary);
    let summary = summary?;
    if terminal && !quiet {
        eprintln!();
    }
    report(&args, &summary)?;
    if args.serve.is_some() {
        eprintln!("download complete; still serving until Ctrl-C");
        crate::shutdown_signal().await;
    }
    Ok(())
}

/// Refuses a bitrate, read timeout or buffer out of range.
fn check_args(args: &GetArgs) -> anyhow::Result<()> {
    if let Some(bitrate) = args.bitrate {
        anyhow::ensure!(
            bitrate.is_finite() && bitrate > 0.0 && bitrate <= 1e6,
            "--bitrate must be within (0, 1000000] Mbit/s"
        );
    }
    anyhow::ensure!(
        (100..=600_000).contains(&args.read_timeout_ms),
        "--read-timeout-ms must be within 100..=600000"
    );
    anyhow::ensure!(
        args.buffer_s.is_finite() && (0.0..=600.0).contains(&args.buffer_s),
        "--buffer-s must be within 0..=600"
    );
    for (flag, value) in [
        ("--upload-mbps", args.upload_mbps),
        ("--target-mbps", args.target_mbps),
    ] {
        if let Some(mbps) = value {
            anyhow::ensure!(
                mbps.is_finite() && mbps > 0.0 && mbps <= 1e6,
                "{flag} must be within (0, 1000000] Mbit/s"
            );
        }
    }
    Ok(())
}

/// Where the object is written: `-o`, else its file name here, or — when
/// streaming to stdout without `-o` — inside a temporary directory, which
/// is returned too (dropping it removes it).
fn output_path(
    args: &GetArgs,
    url: &shoal_client::discover::ObjectUrl,
) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    // Streaming to stdout without -o: the pieces land in a temporary file.
    // A private directory, removed with whatever is in it however this
    // ends.
    let temporary = if args.stream && args.output.is_none() {
        Some(
            tempfile::Builder::new()
                .prefix("shoal-get-")
                .tempdir()
                .context("creating a temporary directory for the pieces")?,
        )
    } else {
        None
    };
    let output = match (&args.output, &temporary) {
        (Some(path), _) => path.clone(),
        (None, Some(dir)) => dir.path().join(url.path.file_name()),
        (None, None) => PathBuf::from(url.path.file_name()),
    };
    Ok((temporary, output))
}

/// The client's options from the arguments; with `--serve`, binds the
/// local address and prints the URL to open.
fn get_options(
    args: &GetArgs,
    url: &shoal_client::discover::ObjectUrl,
    output: PathBuf,
) -> anyhow::Result<shoal_client::GetOptions> {
    let mut options = shoal_client::GetOptions::new(args.url.clone(), output);
    options.mirrors = args.mirrors.clone();
    options.bitrate_mbps = args.bitrate;
    options.read_timeout_ms = args.read_timeout_ms;
    options.buffer_ms = (args.buffer_s * 1000.0) as u64;
    options.local_address = args.local_address;
    options.ca_file = args.ca_file.clone();
    options.peers = shoal_client::peers::PeerOptions {
        enabled: !args.no_peers,
        listen: args.peer_listen,
        upload_mbps: args.upload_mbps,
        upload: !args.no_upload,
        seed_for: args.seed_for.unwrap_or_default(),
        target_mbps: args.target_mbps,
        ..Default::default()
    };
    if args.stream {
        options.stream = Some(shoal_client::download::StreamTo::Stdout);
    }
    if let Some(addr) = args.serve {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("--serve {addr}"))?;
        let local = listener.local_addr()?;
        // Scripts read this line to learn the port.
        eprintln!(
            "serving on http://{local}{} (open it in a player; Ctrl-C to stop)",
            url.path.to_uri_path()
        );
        options.stream = Some(shoal_client::download::StreamTo::Serve(listener));
    }
    Ok(options)
}

/// One progress line: `name`, percent done, rate, ETA and the bytes from
/// each source (✗ dropped, ↓ degraded).
fn progress_line(name: &str, p: &shoal_client::Progress) -> String {
    if let (Some(peers), true) = (&p.peers, p.done_bytes == p.total_bytes) {
        return format!(
            "{name} complete, seeding: {} peers connected, {:.1} MiB uploaded",
            peers.peers,
            mib(peers.bytes_to_peers as f64)
        );
    }
    let fraction = p.done_bytes as f64 / (p.total_bytes.max(1)) as f64;
    let eta = if p.rate_bps > 0.0 {
        (p.total_bytes - p.done_bytes) as f64 / p.rate_bps
    } else {
        f64::NAN
    };
    let per_source: Vec<String> = p
        .sources
        .iter()
        .filter(|s| s.bytes > 0 || !shoal_client::download::is_dropped(s))
        .map(|s| {
            let mark = if shoal_client::download::is_dropped(s) {
                "✗"
            } else if s.health == "degraded" {
                "↓"
            } else {
                ""
            };
            format!("{}{mark} {:.0} MiB", s.name, mib(s.bytes as f64))
        })
        .collect();
    let peers = p.peers.as_ref().map_or(String::new(), |r| {
        format!(
            " | peers {}: ↓ {:.0} MiB ↑ {:.0} MiB ({:.0} % from peers)",
            r.peers,
            mib(r.bytes_from_peers as f64),
            mib(r.bytes_to_peers as f64),
            r.peer_efficiency * 100.0
        )
    });
    format!(
        "{name} {:5.1}% {:7.1} MiB/s ETA {:>5}  {}{peers}",
        fraction * 100.0,
        mib(p.rate_bps),
        if eta.is_finite() {
            format!("{:.0}s", eta)
        } else {
            "?".into()
        },
        per_source.join(" | ")
    )
}

/// Writes a progress line to stderr: redrawn in place on a terminal, else
/// one line after another.
fn print_progress(terminal: bool, line: &str) {
    let mut stderr = std::io::stderr().lock();
    if terminal {
        let _ = write!(stderr, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(stderr, "{line}");
    }
    let _ = stderr.flush();
}

fn report(args: &GetArgs, summary: &shoal_client::Summary) -> anyhow::Result<()> {
    if args.json {
        let json = serde_json::to_string_pretty(summary)?;
        // With --stream, stdout carries the object.
        if args.stream {
            eprintln!("{json}");
        } else {
            println!("{json}");
        }
        return Ok(());
    }
    if args.quiet {
        return Ok(());
    }
    eprintln!(
        "{}: {:.1} MiB in {:.2} s, {:.1} Mbit/s{}{}, verified ({}…)",
        summary.output,
        mib(summary.bytes as f64),
        summary.seconds,
        summary.mbps,
        match (summary.committed_mbps, summary.bitrate_held) {
            (Some(c), Some(true)) => format!(", held {c:.1} Mbit/s"),
            (Some(c), _) => format!(", below the committed {c:.1} Mbit/s"),
            _ => String::new(),
        },
        if summary.resumed_pieces > 0 {
            format!(", resumed with {} pieces on disk", summary.resumed_pieces)
        } else {
            String::new()
        },
        &summary.object_id[..16]
    );
    for source in &summary.sources {
        eprintln!(
            "  {:<12} {:>9.1} MiB {:>5} pieces in {:>5} requests  {}{}",
            source.name,
            mib(source.bytes as f64),
            source.pieces,
            source.requests,
            source.state,
            match source.joined {
                "standby" => " (standby, brought on stream)",
                "selector" => " (replacement from the selector)",
                _ => "",
            }
        );
    }
    eprintln!(
        "  failovers {}, stalls {}, degradations {}, standby brought on stream {}, replacements from the selector {}",
        summary.failovers,
        summary.stalls,
        summary.degradations,
        summary.standby_used,
        summary.replacements - summary.standby_used
    );
    if let Some(peers) = &summary.peers {
        eprintln!(
            "  peers: {:.1} MiB from peers, {:.1} MiB from caches ({:.1} % from peers), {:.1} MiB uploaded; {} peers at most, {} failed pieces, {} banned{}",
            mib(peers.bytes_from_peers as f64),
            mib(peers.bytes_from_caches as f64),
            peers.peer_efficiency * 100.0,
            mib(peers.bytes_to_peers as f64),
            peers.peers_max_seen,
            peers.pieces_failed,
            peers.peers_banned,
            if peers.seeded_s >= 0.5 {
                format!(", seeded {:.0} s", peers.seeded_s)
            } else {
                String::new()
            }
        );
    }
    if let Some(rebuffers) = summary.rebuffers {
        eprintln!(
            "  playback at the committed bitrate: started after {:.2} s, {rebuffers} rebuffering event(s) ({} ms)",
            summary.playback_started_s.unwrap_or(0.0),
            summary.rebuffer_ms.unwrap_or(0)
        );
    }
    Ok(())
}
