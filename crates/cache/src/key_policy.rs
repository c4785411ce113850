//! Which query parameters leave the cache key, per delivery service.
//!
//! A cache-wide `ignored_query_params` list applies unless a `[[service]]`
//! of the cache's config claims the request: the service with the longest
//! `path_prefix` that matches, one naming the request's host beating one
//! for any host (the selector's rule for its delivery services). A
//! service's list replaces the cache-wide one; an empty list keeps every
//! parameter in the key. Ignored parameters still reach the origin.
//!
//! ```toml
//! ignored_query_params = ["utm_*"]
//!
//! [[service]]
//! name = "video"
//! hosts = ["video.example.com"]     # empty: any host
//! path_prefix = "/video/"
//! ignored_query_params = ["token", "expires", "utm_*"]
//! ```
//!
//! Every cache of a mesh needs the same rules: the key decides which
//! stored response answers.
//!
//! A service may also require **signed URLs** (`[service.signing]`, see
//! `shoal_core::url_sign`): every request it claims must carry a valid
//! signature, whose parameters never reach the key or the origin.
//!
//! ```toml
//! [[service]]
//! name = "paid"
//! path_prefix = "/paid/"
//! [service.signing]
//! keys = { k2 = "the new secret, 16+ bytes", k1 = "the old one, until its URLs expire" }
//! ```

use serde::{Deserialize, Serialize};

/// Most services one cache keys for.
pub const SERVICES_MAX: usize = 1_000;
/// Most ignored parameter names in one list.
pub const IGNORED_PARAMS_MAX: usize = 256;
/// Longest service path prefix.
pub const PATH_PREFIX_LEN_MAX_BYTES: usize = 1_024;

/// One delivery service's cache-key rules.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceKeyRules {
    /// For the logs and errors.
    pub name: String,
    /// Host names (without port); empty: any host.
    pub hosts: Vec<String>,
    /// Paths under this prefix belong to the service.
    pub path_prefix: String,
    /// Parameters left out of the key of this service's requests (names,
    /// or prefixes ending in `*`).
    pub ignored_query_params: Vec<String>,
    /// Signed URLs required for this service's requests.
    pub signing: Option<SigningSettings>,
}

pub use shoal_core::url_sign::SigningSettings;

/// The cache-wide list and the services', ready to be asked per request.
#[derive(Clone, Debug, Default)]
pub struct KeyPolicy {
    default: Vec<String>,
    services: Vec<ServiceKeyRules>,
    /// Each service's signing keys (`None`: no signature required).
    signing: Vec<Option<shoal_core::url_sign::SigningKeys>>,
}

impl KeyPolicy {
    /// Host names are compared without case.
    pub fn new(default: Vec<String>, services: Vec<ServiceKeyRules>) -> Self {
        let services = services
            .into_iter()
            .map(|mut s: ServiceKeyRules| {
                s.hosts.iter_mut().for_each(|h| h.make_ascii_lowercase());
                s
            })
            .collect::<Vec<_>>();
        // (Checked by `check_services` at start-up: a bad set is dropped
        // here only if that was skipped, and then nothing is served.)
        let signing = services
            .iter()
            .map(|s| {
                s.signing
                    .as_ref()
                    .map(|settings| settings.keys(&s.name).unwrap_or_default())
            })
            .collect();
        Self {
            default,
            services,
            signing,
        }
    }

    /// The parameters to leave out of the key of a request for `path` to
    /// `host` (the `Host` field; any port is ignored).
    pub fn ignored(&self, host: Option<&str>, path: &str) -> &[String] {
        match self.service_index(host, path) {
            Some(index) => &self.services[index].ignored_query_params,
            None => &self.default,
        }
    }

    /// The signing keys of the service claiming a request, with its name,
    /// when it requires signed URLs.
    pub fn signing(
        &self,
        host: Option<&str>,
        path: &str,
    ) -> Option<(&str, &shoal_core::url_sign::SigningKeys)> {
        let index = self.service_index(host, path)?;
        let keys = self.signing[index].as_ref()?;
        Some((&self.services[index].name, keys))
    }

    /// The service claiming a request for `path` to `host`.
    fn service_index(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(|h| host_without_port(h).to_ascii_lowercase());
        let mut best: Option<(usize, (bool, usize))> = None;
        for (index, service) in self.services.iter().enumerate() {
            if !path.starts_with(&service.path_prefix) {
                continue;
            }
            let names_host = !service.hosts.is_empty();
            if names_host && !host.as_ref().is_some_and(|h| service.hosts.contains(h)) {
                continue;
            }
            let rank = (names_host, service.path_prefix.len());
            if best.is_none_or(|(_, best_rank)| rank > best_rank) {
                best = Some((index, rank));
            }
        }
        best.map(|(index, _)| index)
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal: `[::1]:8080`.
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Checks a list of parameter names; the error names `setting`.
pub fn check_params(setting: &str, names: &[String]) -> Result<(), String> {
    if names.len() > IGNORED_PARAMS_MAX {
        return Err(format!(
            "{setting}: {} names (at most {IGNORED_PARAMS_MAX})",
            names.len()
        ));
    }
    for name in names {
        let bare = name.strip_suffix('*').unwrap_or(name);
        if bare.is_empty() || bare.contains(['&', '=', '*', '?', '#']) {
            return Err(format!(
                "{setting}: `{name}` is not a parameter name (or a prefix ending in `*`)"
            ));
        }
    }
    Ok(())
}

/// Checks the services of a cache's config; the error names the service.
pub fn check_services(services: &[ServiceKeyRules]) -> Result<(), String> {
    if services.len() > SERVICES_MAX {
        return Err(format!(
            "service: {} services (at most {SERVICES_MAX})",
            services.len()
        ));
    }
    for (index, service) in services.iter().enumerate() {
        let name = if service.name.is_empty() {
            format!("service #{}", index + 1)
        } else {
            format!("service `{}`", service.name)
        };
        if !service.path_prefix.starts_with('/')
            || service.path_prefix.len() > PATH_PREFIX_LEN_MAX_BYTES
        {
            return Err(format!(
                "{name}: path_prefix `{}` must start with `/` (at most {PATH_PREFIX_LEN_MAX_BYTES} bytes)",
                service.path_prefix
            ));
        }
        check_params(
            &format!("{name}: ignored_query_params"),
            &service.ignored_query_params,
        )?;
        if let Some(signing) = &service.signing {
            signing.keys(&name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, hosts: &[&str], prefix: &str, params: &[&str]) -> ServiceKeyRules {
        ServiceKeyRules {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.into(),
            ignored_query_params: params.iter().map(|p| p.to_string()).collect(),
            signing: None,
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_a_named_host_beats_any_host() {
        let policy = KeyPolicy::new(
            vec!["utm_*".into()],
            vec![
                service("all-video", &[], "/video/", &["token"]),
                service("live", &[], "/video/live/", &[]),
                service("brand", &["Video.Example"], "/video/", &["sig", "exp"]),
            ],
        );
        let ignored = |host, path| policy.ignored(host, path).to_vec();
        assert_eq!(ignored(None, "/img/a.png"), vec!["utm_*"]);
        assert_eq!(ignored(None, "/video/a.mp4"), vec!["token"]);
        assert_eq!(
            ignored(Some("other.example"), "/video/a.mp4"),
            vec!["token"]
        );
        assert_eq!(
            ignored(Some("video.example:8443"), "/video/a.mp4"),
            vec!["sig", "exp"]
        );
        // A named host beats a longer prefix for any host.
        assert_eq!(
            ignored(Some("VIDEO.example"), "/video/live/a.ts"),
            vec!["sig", "exp"]
        );
        assert!(ignored(None, "/video/live/a.ts").is_empty());
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("a.example"), "a.example");
    }

    #[test]
    fn settings_are_checked_with_their_names() {
        assert!(check_params("x", &["token".into(), "utm_*".into()]).is_ok());
        let error = check_params("ignored_query_params", &["a=b".into()]).unwrap_err();
        assert!(error.contains("ignored_query_params") && error.contains("a=b"));
        let error = check_services(&[service("v", &[], "video/", &[])]).unwrap_err();
        assert!(error.contains("service `v`") && error.contains("path_prefix"));
        let error = check_services(&[service("", &[], "/v/", &["*"])]).unwrap_err();
        assert!(error.contains("service #1: ignored_query_params"));
    }
}
