use super::*;

/// An environment with these variables only.
fn environment(variables: &[(&str, &str)]) -> ProxyEnvironment {
    ProxyEnvironment::from_lookup(|name| {
        variables
            .iter()
            .find(|(set, _)| *set == name)
            .map(|(_, value)| (*value).to_owned())
    })
}

fn server(url: &str) -> Uri {
    url.parse().expect("server URL")
}

/// The proxy for `url` with `variables` set and no proxy-url, as `scheme://host:port`.
fn chosen(url: &str, variables: &[(&str, &str)]) -> Option<String> {
    choose(&server(url), None, &environment(variables))
        .expect("usable settings")
        .map(|proxy| proxy.uri().to_string().trim_end_matches('/').to_owned())
}

const API: &str = "https://api.example.com:6443";
const PROXY: &str = "http://proxy.corp:3128";

#[test]
fn no_setting_means_no_proxy() {
    assert_eq!(chosen(API, &[]), None);
    assert_eq!(chosen(API, &[("HTTPS_PROXY", "")]), None, "empty is unset");
}

#[test]
fn an_https_server_takes_https_proxy_and_an_http_server_http_proxy() {
    let both = [
        ("HTTPS_PROXY", PROXY),
        ("HTTP_PROXY", "http://plain.corp:8080"),
    ];
    assert_eq!(chosen(API, &both).as_deref(), Some(PROXY));
    assert_eq!(
        chosen("http://api.example.com:8080", &both).as_deref(),
        Some("http://plain.corp:8080")
    );
    assert_eq!(
        chosen(API, &[("HTTP_PROXY", "http://plain.corp:8080")]),
        None,
        "HTTP_PROXY is not for https servers"
    );
}

#[test]
fn the_upper_case_variable_wins_and_an_empty_one_counts_as_unset() {
    let lower = [("https_proxy", "http://lower:1")];
    assert_eq!(chosen(API, &lower).as_deref(), Some("http://lower:1"));
    let both = [
        ("HTTPS_PROXY", "http://upper:1"),
        ("https_proxy", "http://lower:1"),
    ];
    assert_eq!(chosen(API, &both).as_deref(), Some("http://upper:1"));
    let empty_upper = [("HTTPS_PROXY", ""), ("https_proxy", "http://lower:1")];
    assert_eq!(chosen(API, &empty_upper).as_deref(), Some("http://lower:1"));
    let proxy = choose(&server(API), None, &environment(&lower))
        .expect("usable")
        .expect("a proxy");
    assert_eq!(proxy.setting, ProxySetting::Variable("https_proxy"));
}

#[test]
fn a_proxy_without_a_scheme_is_an_http_proxy() {
    assert_eq!(
        chosen(API, &[("HTTPS_PROXY", "proxy.corp:3128")]).as_deref(),
        Some(PROXY)
    );
}

#[test]
fn the_kind_of_proxy_follows_its_scheme() {
    let protocol = |url: &str| {
        choose(&server(API), None, &environment(&[("HTTPS_PROXY", url)]))
            .expect("usable")
            .expect("a proxy")
            .protocol()
    };
    assert_eq!(protocol("http://p:1"), ProxyProtocol::Http);
    assert_eq!(protocol("https://p:1"), ProxyProtocol::Https);
    assert_eq!(protocol("socks5://p:1"), ProxyProtocol::Socks5);
    assert_eq!(protocol("socks5h://p:1"), ProxyProtocol::Socks5);
}

#[test]
fn the_clusters_proxy_url_wins_over_the_environment_and_no_proxy() {
    let everything_exempt = environment(&[("HTTPS_PROXY", PROXY), ("NO_PROXY", "*")]);
    let proxy = choose(
        &server(API),
        Some("socks5://tunnel.corp:1080"),
        &everything_exempt,
    )
    .expect("usable")
    .expect("proxy-url applies whatever NO_PROXY says");
    assert_eq!(proxy.uri().to_string(), "socks5://tunnel.corp:1080/");
    assert_eq!(proxy.setting, ProxySetting::ProxyUrl);
    let local = choose(
        &server("https://127.0.0.1:6443"),
        Some(PROXY),
        &environment(&[]),
    )
    .expect("usable");
    assert!(local.is_some(), "even for a server on this machine");
    assert_eq!(
        choose(
            &server(API),
            Some(""),
            &environment(&[("HTTPS_PROXY", PROXY)])
        )
        .expect("usable")
        .map(|proxy| proxy.setting),
        Some(ProxySetting::Variable("HTTPS_PROXY")),
        "an empty proxy-url is unset"
    );
}

#[test]
fn this_machine_is_never_reached_through_the_environments_proxy() {
    for local in [
        "https://localhost:6443",
        "https://127.0.0.1:6443",
        "https://127.1.2.3",
        "https://[::1]:6443",
    ] {
        assert_eq!(chosen(local, &[("HTTPS_PROXY", PROXY)]), None, "{local}");
    }
}

/// Whether `no_proxy` sends connections to `url` past the proxy.
fn exempts(no_proxy: &str, url: &str) -> bool {
    chosen(url, &[("HTTPS_PROXY", PROXY), ("NO_PROXY", no_proxy)]).is_none()
}

#[test]
fn no_proxy_names_hosts_and_their_subdomains() {
    assert!(exempts("api.example.com", API));
    assert!(
        exempts("example.com", API),
        "a domain covers its subdomains"
    );
    assert!(exempts("EXAMPLE.com", API), "whatever the case");
    assert!(!exempts("le.com", API), "only at a dot");
    assert!(!exempts("other.example.com", API));
    assert!(
        exempts("other.org, example.com ,", API),
        "a list, spaces and all"
    );
    assert!(exempts("*", API));
}

#[test]
fn a_leading_dot_or_star_dot_is_for_subdomains_only() {
    assert!(exempts(".example.com", API));
    assert!(exempts("*.example.com", API));
    assert!(!exempts(".api.example.com", API), "not the name itself");
    assert!(!exempts("*.api.example.com", API), "not the name itself");
    assert!(
        exempts(".api.example.com,api.example.com", API),
        "the other entry still applies"
    );
}

#[test]
fn no_proxy_names_addresses_and_ranges() {
    let by_address = "https://10.1.2.3:6443";
    assert!(exempts("10.1.2.3", by_address));
    assert!(exempts("10.0.0.0/8", by_address));
    assert!(!exempts("10.1.2.4,11.0.0.0/8", by_address));
    assert!(exempts("*", by_address), "every host, addresses too");
    assert!(exempts("fd00::/8", "https://[fd00::1]:6443"));
    assert!(exempts("fd00::1", "https://[fd00::1]:6443"));
}

#[test]
fn an_entry_with_a_port_is_for_that_port_only() {
    assert!(exempts("api.example.com:6443", API));
    assert!(!exempts("api.example.com:443", API));
    assert!(
        exempts("example.com:443", "https://api.example.com"),
        "443 for https"
    );
    assert!(exempts("10.1.2.3:6443", "https://10.1.2.3:6443"));
    assert!(!exempts("10.1.2.3:443", "https://10.1.2.3:6443"));
    assert!(exempts("[fd00::1]:6443", "https://[fd00::1]:6443"));
    assert!(!exempts("[fd00::1]:443", "https://[fd00::1]:6443"));
}

#[test]
fn lower_case_no_proxy_counts_when_upper_case_is_unset() {
    let lower = [("HTTPS_PROXY", PROXY), ("no_proxy", "example.com")];
    assert_eq!(chosen(API, &lower), None);
}

#[test]
fn a_malformed_proxy_is_an_error_that_names_its_setting() {
    let malformed = |variables: &[(&str, &str)], url: &str| {
        choose(&server(url), None, &environment(variables))
            .expect_err("not a proxy URL")
            .to_string()
    };
    let message = malformed(&[("HTTPS_PROXY", "http://proxy.corp:31 28")], API);
    assert!(
        message.starts_with("HTTPS_PROXY is not a proxy URL"),
        "{message}"
    );
    let message = malformed(&[("http_proxy", "http://[::1")], "http://api:80");
    assert!(
        message.starts_with("http_proxy is not a proxy URL"),
        "{message}"
    );
    let message = malformed(
        &[("HTTPS_PROXY", "http://[::1"), ("NO_PROXY", "*")],
        "http://api:80",
    );
    assert!(
        message.starts_with("HTTPS_PROXY is not a proxy URL"),
        "kube reads it for any server: {message}"
    );
    let message = malformed(&[("HTTPS_PROXY", "ftp://proxy.corp:21")], API);
    assert!(
        message.starts_with("HTTPS_PROXY names a ftp:// proxy"),
        "{message}"
    );
    let message = choose(&server(API), Some("socks5h://p:1"), &environment(&[]))
        .expect_err("client-go's proxy-url takes socks5, not socks5h")
        .to_string();
    assert!(
        message.contains("the kubeconfig cluster's proxy-url"),
        "{message}"
    );
}

#[test]
fn credentials_in_the_url_are_sent_to_the_proxy_and_never_shown() {
    let proxy = choose(
        &server(API),
        None,
        &environment(&[("HTTPS_PROXY", "http://alice:s%40cret@proxy.corp:3128")]),
    )
    .expect("usable")
    .expect("a proxy");
    let credentials = proxy.intercept.basic_auth().expect("credentials");
    // base64 of "alice:s@cret"
    assert_eq!(credentials, "Basic YWxpY2U6c0BjcmV0");
    assert_eq!(
        proxy.to_string(),
        "http://proxy.corp:3128 (from HTTPS_PROXY)"
    );
    assert!(!format!("{proxy:?}").contains("cret"));
    let socks = choose(
        &server(API),
        Some("socks5://bob:pw@s.corp:1080"),
        &environment(&[]),
    )
    .expect("usable")
    .expect("a proxy");
    assert_eq!(socks.intercept.raw_auth(), Some(("bob", "pw")));
}
