//! Which proxy, if any, carries the connections to the API server, decided as kubectl
//! decides: the kubeconfig cluster's `proxy-url` when it has one, else the environment
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, by Go's rules); and the connectors that dial
//! through it, whose failures name it.

use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use tower::util::MapErr;
use tower::{BoxError, Service, ServiceExt as _};

/// Where a proxy setting was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySetting {
    /// The `proxy-url` of the kubeconfig's cluster.
    ProxyUrl,
    /// An environment variable: `HTTPS_PROXY`, `https_proxy`, `HTTP_PROXY` or `http_proxy`.
    Variable(&'static str),
}

impl std::fmt::Display for ProxySetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ProxyUrl => f.write_str("the kubeconfig cluster's proxy-url"),
            Self::Variable(name) => f.write_str(name),
        }
    }
}

/// Why the proxy settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The setting is not a URL with a host.
    #[error(
        "{setting} is not a proxy URL: give one as http://HOST:PORT, https://HOST:PORT or \
         socks5://HOST:PORT"
    )]
    Malformed {
        /// The setting.
        setting: ProxySetting,
    },
    /// The setting names a kind of proxy kubectl does not use either.
    #[error(
        "{setting} names a {scheme}:// proxy: the API server is reached through http://, \
         https:// or socks5:// proxies"
    )]
    Scheme {
        /// The setting.
        setting: ProxySetting,
        /// Its scheme.
        scheme: String,
    },
}

/// A connection to the API server that the proxy did not make.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the API server: the proxy {proxy} {failure}")]
pub struct ProxyFailure {
    /// The proxy, and where it was configured.
    proxy: String,
    /// What it did.
    failure: &'static str,
    /// How it failed.
    source: BoxError,
}

/// What a CONNECT tunnel's failure is (hyper-util names the type only as its connector's).
type TunnelFailure = <Tunnel<HttpConnector> as Service<Uri>>::Error;
/// What a SOCKS5 connection's failure is.
type SocksFailure = <SocksV5<HttpConnector> as Service<Uri>>::Error;

impl ProxyFailure {
    fn new(proxy: String, source: BoxError) -> Self {
        let (failure, source) = match source.downcast::<SocksFailure>() {
            Ok(socks) => socks_failure(*socks),
            Err(source) => (tunnel_failure(&source), source),
        };
        Self {
            proxy,
            failure,
            source,
        }
    }
}

/// What an HTTP proxy did, from its connector's failure.
fn tunnel_failure(error: &BoxError) -> &'static str {
    match error.downcast_ref::<TunnelFailure>() {
        Some(TunnelFailure::ConnectFailed(_)) => "is unreachable",
        Some(TunnelFailure::ProxyAuthRequired) => {
            "asks for credentials: give them in its URL (http://USER:PASSWORD@HOST:PORT)"
        }
        Some(TunnelFailure::TunnelUnsuccessful) => "refused the tunnel",
        Some(_) => "broke off the tunnel",
        None => "failed",
    }
}

/// What a SOCKS5 proxy did, and why: hyper-util's SOCKS error does not give its cause as
/// its source, so the cause is taken out of it.
fn socks_failure(error: SocksFailure) -> (&'static str, BoxError) {
    match error {
        SocksFailure::Inner(cause) => ("is unreachable", Box::new(cause)),
        SocksFailure::Io(cause) => ("broke off the connection", Box::new(cause)),
        SocksFailure::V5(_) => ("refused the connection", Box::new(error)),
        _ => ("broke off the connection", Box::new(error)),
    }
}

/// How a proxy is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// HTTP CONNECT over plain TCP.
    Http,
    /// HTTP CONNECT over TLS, checked as kubectl checks it: with the cluster's TLS settings.
    Https,
    /// SOCKS5; the proxy resolves the API server's name.
    Socks5,
}

/// The proxy that carries the connections to the API server.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Its address, and the credentials its URL carried (never shown).
    intercept: Intercept,
    /// Where it was configured.
    pub setting: ProxySetting,
}

impl Proxy {
    /// Its URL, without credentials (`http://proxy.example.com:3128/`).
    pub fn uri(&self) -> &Uri {
        self.intercept.uri()
    }

    /// How it is spoken to.
    pub fn protocol(&self) -> ProxyProtocol {
        match self.uri().scheme_str() {
            Some("https") => ProxyProtocol::Https,
            Some("socks5" | "socks5h") => ProxyProtocol::Socks5,
            _ => ProxyProtocol::Http,
        }
    }

    /// `connector` opening HTTP CONNECT tunnels through this proxy, with the credentials of
    /// its URL.
    pub(super) fn tunnel<C>(&self, connector: C) -> Tunnel<C> {
        let tunnel = Tunnel::new(self.uri().clone(), connector);
        match self.intercept.basic_auth() {
            Some(credentials) => tunnel.with_auth(credentials.clone()),
            None => tunnel,
        }
    }

    /// `connector` opening SOCKS5 connections through this proxy, with the credentials of
    /// its URL.
    pub(super) fn socks<C>(&self, connector: C) -> SocksV5<C> {
        let socks = SocksV5::new(self.uri().clone(), connector);
        match self.intercept.raw_auth() {
            Some((user, password)) => socks.with_auth(user.into(), password.into()),
            None => socks,
        }
    }

    /// `connector`, whose failures say that this proxy failed, and how.
    pub(super) fn named<S>(
        &self,
        connector: S,
    ) -> MapErr<S, impl FnOnce(S::Error) -> ProxyFailure + Clone + use<S>>
    where
        S: Service<Uri>,
        S::Error: Into<BoxError>,
    {
        let proxy = self.to_string();
        connector.map_err(move |error| ProxyFailure::new(proxy, error.into()))
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self.uri();
        let scheme = uri.scheme_str().unwrap_or("http");
        let authority = uri.authority().map_or("", |authority| authority.as_str());
        write!(f, "{scheme}://{authority} (from {})", self.setting)
    }
}

/// The environment's proxy variables, with Go's names and precedence: the upper-case name
/// first, an empty value as unset.
#[derive(Debug, Clone, Default)]
pub struct ProxyEnvironment {
    https: Option<(&'static str, String)>,
    http: Option<(&'static str, String)>,
    no_proxy: String,
}

impl ProxyEnvironment {
    /// This process's proxy variables.
    pub fn read() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let first_set = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                lookup(name)
                    .filter(|value| !value.is_empty())
                    .map(|value| (name, value))
            })
        };
        Self {
            https: first_set(["HTTPS_PROXY", "https_proxy"]),
            http: first_set(["HTTP_PROXY", "http_proxy"]),
            no_proxy: first_set(["NO_PROXY", "no_proxy"])
                .map(|(_, value)| value)
                .unwrap_or_default(),
        }
    }
}

/// The proxy for connections to `server`: the cluster's `proxy-url` when it has one,
/// whatever NO_PROXY says (as client-go); else the environment's proxy for the server's
/// scheme, unless the server is this machine or NO_PROXY names it (as Go's
/// `ProxyFromEnvironment`). A setting that is not a proxy URL is an error, not ignored.
pub fn choose(
    server: &Uri,
    proxy_url: Option<&str>,
    environment: &ProxyEnvironment,
) -> Result<Option<Proxy>, ProxyError> {
    if server.host().is_none() || !matches!(server.scheme_str(), Some("https" | "http")) {
        // Not a server URL at all: the client reports it.
        return Ok(None);
    }
    if let Some(value) = proxy_url.filter(|value| !value.is_empty()) {
        return parse(
            server,
            value,
            ProxySetting::ProxyUrl,
            &["http", "https", "socks5"],
        )
        .map(Some);
    }
    let from_environment = |(name, value): &(&'static str, String)| {
        parse(
            server,
            value,
            ProxySetting::Variable(name),
            &["http", "https", "socks5", "socks5h"],
        )
    };
    // kube reads HTTPS_PROXY whatever the server's scheme and fails on one that is not a
    // URL: checking it first names the variable.
    let https = environment
        .https
        .as_ref()
        .map(from_environment)
        .transpose()?;
    let (proxy, value) = match server.scheme_str() {
        Some("https") => (https, environment.https.as_ref()),
        _ => {
            let http = environment.http.as_ref();
            (http.map(from_environment).transpose()?, http)
        }
    };
    match (proxy, value) {
        (Some(proxy), Some((_, value))) if !bypasses(server, &environment.no_proxy, value) => {
            Ok(Some(proxy))
        }
        _ => Ok(None),
    }
}

/// `value` as the proxy for `server`, if it is one of `schemes`.
fn parse(
    server: &Uri,
    value: &str,
    setting: ProxySetting,
    schemes: &[&str],
) -> Result<Proxy, ProxyError> {
    // The matcher passes over a scheme it does not know as if nothing were set.
    let scheme = value
        .parse::<Uri>()
        .ok()
        .and_then(|uri| uri.scheme_str().map(str::to_owned));
    if let Some(scheme) = scheme.filter(|scheme| !schemes.contains(&scheme.as_str())) {
        return Err(ProxyError::Scheme { setting, scheme });
    }
    let intercept = Matcher::builder()
        .all(value)
        .build()
        .intercept(server)
        .ok_or(ProxyError::Malformed { setting })?;
    Ok(Proxy { intercept, setting })
}

/// Whether connections to `server` go direct although `proxy` is set: Go never proxies
/// this machine (localhost, loopback addresses), nor a host that NO_PROXY names.
fn bypasses(server: &Uri, no_proxy: &str, proxy: &str) -> bool {
    let Some(host) = server.host() else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    let default_port = if server.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let port = server.port_u16().unwrap_or(default_port);
    let Some(entries) = entries_for(no_proxy, host, port) else {
        return true;
    };
    Matcher::builder()
        .all(proxy)
        .no(entries)
        .build()
        .intercept(server)
        .is_none()
}

/// NO_PROXY's entries that can apply to `host:port`, in the form hyper-util's matcher
/// reads: it matches names, their subdomains, addresses and CIDR ranges as Go does, but
/// Go also reads a port (`host:6443` applies to that port only), a leading dot as
/// subdomains only (`.example.com`, `*.example.com`), and `*` for IP addresses too.
/// `None` when `*` exempts every host.
fn entries_for(no_proxy: &str, host: &str, port: u16) -> Option<String> {
    let port = port.to_string();
    let mut kept = Vec::new();
    for entry in no_proxy.split(',').map(str::trim) {
        if entry == "*" {
            return None;
        }
        let (name, entry_port) = split_port(entry);
        if entry_port.is_some_and(|entry_port| entry_port != port) {
            continue;
        }
        let name = name
            .strip_prefix('*')
            .filter(|rest| rest.starts_with('.'))
            .unwrap_or(name);
        if name
            .strip_prefix('.')
            .is_some_and(|parent| parent.eq_ignore_ascii_case(host))
        {
            continue;
        }
        kept.push(name);
    }
    Some(kept.join(","))
}

/// An entry's host and port: `name:port`, `1.2.3.4:port`, `[::1]:port`; a bare IPv6
/// address or range has no port.
fn split_port(entry: &str) -> (&str, Option<&str>) {
    if let Some(bracketed) = entry.strip_prefix('[') {
        return match bracketed.split_once(']') {
            Some((address, rest)) => (address, rest.strip_prefix(':')),
            None => (entry, None),
        };
    }
    match entry.split_once(':') {
        Some((name, port)) if !port.contains(':') => (name, Some(port)),
        _ => (entry, None),
    }
}

#[cfg(test)]
mod tests;
