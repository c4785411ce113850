//! Which delivery service a request belongs to: by host and path prefix,
//! a pure lookup over the validated configuration.
//!
//! Rules: services that name the request's host are tried before services
//! that answer any host; within each group the longest matching path
//! prefix wins. No match is a 404 ("no delivery service"), never a guess.

use crate::config::DeliveryService;

#[derive(Clone, Debug)]
pub struct ServiceTable {
    /// Longest prefix first, so the first match is the best.
    services: Vec<DeliveryService>,
}

/// The host part of a `Host` header, lower-cased, without port.
pub fn host_without_port(host: &str) -> String {
    let host = host.trim();
    let bare = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    bare.to_ascii_lowercase()
}

impl ServiceTable {
    pub fn new(mut services: Vec<DeliveryService>) -> Self {
        services.sort_by(|a, b| {
            b.path_prefix
                .len()
                .cmp(&a.path_prefix.len())
                .then_with(|| a.name.cmp(&b.name))
        });
        Self { services }
    }

    /// The service for `path` (a decoded, canonical request path) on `host`
    /// (a `Host` header value, if any).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&DeliveryService> {
        let host = host.map(host_without_port);
        let named = host.as_ref().and_then(|host| {
            self.services
                .iter()
                .filter(|s| s.hosts.iter().any(|h| h == host))
                .find(|s| path.starts_with(&s.path_prefix))
        });
        named.or_else(|| {
            self.services
                .iter()
                .filter(|s| s.hosts.is_empty())
                .find(|s| path.starts_with(&s.path_prefix))
        })
    }

    pub fn all(&self) -> &[DeliveryService] {
        &self.services
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, hosts: &[&str], prefix: &str) -> DeliveryService {
        DeliveryService {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.into(),
            ..DeliveryService::default()
        }
    }

    #[test]
    fn host_then_longest_prefix() {
        let table = ServiceTable::new(vec![
            service("any", &[], "/"),
            service("video", &[], "/video/"),
            service("live", &[], "/video/live/"),
            service("games", &["games.example"], "/"),
        ]);
        let name = |host: Option<&str>, path: &str| table.find(host, path).map(|s| s.name.clone());
        assert_eq!(name(None, "/video/a.mp4").as_deref(), Some("video"));
        assert_eq!(name(None, "/video/live/x").as_deref(), Some("live"));
        assert_eq!(name(None, "/other").as_deref(), Some("any"));
        assert_eq!(
            name(Some("GAMES.example:8070"), "/video/a.mp4").as_deref(),
            Some("games")
        );
        assert_eq!(name(Some("other.example"), "/x").as_deref(), Some("any"));
        let narrow = ServiceTable::new(vec![service("video", &[], "/video/")]);
        assert!(narrow.find(None, "/music/a").is_none());
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("Example.COM:80"), "example.com");
        assert_eq!(host_without_port("[::1]:8070"), "::1");
        assert_eq!(host_without_port("example.com"), "example.com");
    }
}
