//! `shoal sign`: a signed URL for a delivery service that requires them
//! (`[service.signing]` at its caches and selectors; see
//! `shoal_core::url_sign`).

use anyhow::Context;
use std::net::IpAddr;

#[derive(clap::Args)]
pub struct SignArgs {
    /// The URL to sign, at a cache or a selector, e.g.
    /// https://cdn.example/paid/film.mp4 (a query it has is kept).
    pub url: String,
    /// A key id the service accepts (a key of its `[service.signing]`).
    #[arg(long)]
    pub key_id: String,
    /// That key's secret.
    #[arg(long, env = "SHOAL_SIGN_SECRET", hide_env_values = true)]
    pub secret: String,
    /// How long the URL works, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub expires_in_s: u64,
    /// Make it good for every path under this prefix (e.g. the segments of
    /// one stream) instead of the URL's path only.
    #[arg(long)]
    pub scope: Option<String>,
    /// Make it good for this client address only.
    #[arg(long)]
    pub client: Option<IpAddr>,
}

pub fn run(args: SignArgs) -> anyhow::Result<()> {
    println!("{}", signed_url(&args, now_unix_s())?);
    Ok(())
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `args.url` with the signature's parameters, valid until
/// `now_unix_s + expires_in_s`.
fn signed_url(args: &SignArgs, now_unix_s: u64) -> anyhow::Result<String> {
    // The same checks a cache makes of its keys.
    shoal_core::url_sign::SigningKeys::new([(args.key_id.as_str(), args.secret.as_str())])
        .context("--key-id / --secret")?;
    let (_, rest) = args
        .url
        .split_once("://")
        .filter(|(scheme, _)| *scheme == "http" || *scheme == "https")
        .with_context(|| format!("`{}` is not an http:// or https:// URL", args.url))?;
    let path_start = rest
        .find('/')
        .with_context(|| format!("`{}` has no path", args.url))?;
    let (before_query, query) = match args.url.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (args.url.as_str(), None),
    };
    let raw_path = rest[path_start..].split('?').next().unwrap_or("/");
    let path = shoal_http::path::RequestPath::parse(raw_path)
        .with_context(|| format!("the path of `{}`", args.url))?;
    if let Some(scope) = &args.scope {
        anyhow::ensure!(
            scope.starts_with('/') && path.as_str().starts_with(scope.as_str()),
            "--scope {scope} must start with / and contain the URL's path {}",
            path.as_str()
        );
    }
    let claims = shoal_core::url_sign::Claims {
        expires_unix_s: now_unix_s
            .checked_add(args.expires_in_s)
            .context("--expires-in-s is too large")?,
        key_id: args.key_id.clone(),
        scope: args.scope.clone(),
        client: args.client,
    };
    let signature =
        shoal_core::url_sign::signed_query(path.as_str(), &claims, args.secret.as_bytes());
    Ok(match shoal_core::url_sign::strip(query) {
        Some(kept) => format!("{before_query}?{kept}&{signature}"),
        None => format!("{before_query}?{signature}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_url_verifies_for_its_path() {
        let args = SignArgs {
            url: "https://cdn.example/paid/a%20film.mp4?lang=en&shoal-sig=old".into(),
            key_id: "k1".into(),
            secret: "a secret of sixteen+ bytes".into(),
            expires_in_s: 60,
            scope: None,
            client: None,
        };
        let url = signed_url(&args, 1_000).unwrap();
        assert!(url.starts_with("https://cdn.example/paid/a%20film.mp4?lang=en&shoal-exp=1060&"));
        assert!(!url.contains("shoal-sig=old"));
        let keys =
            shoal_core::url_sign::SigningKeys::new([("k1", "a secret of sixteen+ bytes")]).unwrap();
        let query = url.split_once('?').unwrap().1;
        let client = "192.0.2.1".parse().unwrap();
        assert!(keys
            .verify("/paid/a film.mp4", Some(query), client, 1_000)
            .is_ok());
        assert!(keys
            .verify("/paid/other.mp4", Some(query), client, 1_000)
            .is_err());
        let bad_scope = SignArgs {
            scope: Some("/free/".into()),
            ..args
        };
        assert!(signed_url(&bad_scope, 1_000).is_err());
    }
}
