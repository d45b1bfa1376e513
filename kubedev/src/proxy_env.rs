//! How `-- CMD` reaches the cluster where tunneld's machine-wide network is not up: the
//! variables tools read for a proxy (`ALL_PROXY`, `HTTP_PROXY`, `HTTPS_PROXY`, each also
//! in lowercase, which curl and many others read only), pointed at tunneld's proxy, and
//! `NO_PROXY` keeping this machine's loopback out of it.

use std::collections::BTreeMap;

use crate::control::ProxyStatus;

/// Never through the proxy: this machine itself.
pub const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The variables that send a command's connections through `proxy`, with what the user's
/// own `NO_PROXY`/`no_proxy` (`inherited`) listed still kept out of it.
pub fn proxy_variables(proxy: &ProxyStatus, inherited: &[String]) -> BTreeMap<String, String> {
    let mut no_proxy: Vec<&str> = LOOPBACK.to_vec();
    for entry in inherited.iter().flat_map(|list| list.split(',')) {
        let entry = entry.trim();
        if !entry.is_empty() && !no_proxy.contains(&entry) {
            no_proxy.push(entry);
        }
    }
    let no_proxy = no_proxy.join(",");
    let mut variables = BTreeMap::new();
    for (name, value) in [
        ("ALL_PROXY", &proxy.socks_url),
        ("HTTP_PROXY", &proxy.http_url),
        ("HTTPS_PROXY", &proxy.http_url),
        ("NO_PROXY", &no_proxy),
    ] {
        variables.insert(name.to_ascii_lowercase(), value.clone());
        variables.insert(name.to_owned(), value.clone());
    }
    variables
}

/// [`proxy_variables`] with the `NO_PROXY` and `no_proxy` of this process's environment.
pub fn for_command(proxy: &ProxyStatus) -> BTreeMap<String, String> {
    let inherited: Vec<String> = ["NO_PROXY", "no_proxy"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .collect();
    proxy_variables(proxy, &inherited)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy() -> ProxyStatus {
        ProxyStatus::new("127.0.0.1:41234".parse().expect("address"), "s3cr3t")
    }

    #[test]
    fn every_spelling_tools_read_points_at_the_proxy() {
        let variables = proxy_variables(&proxy(), &[]);
        let socks = "socks5h://kubedev:s3cr3t@127.0.0.1:41234";
        let http = "http://kubedev:s3cr3t@127.0.0.1:41234";
        for (name, value) in [
            ("ALL_PROXY", socks),
            ("all_proxy", socks),
            ("HTTP_PROXY", http),
            ("http_proxy", http),
            ("HTTPS_PROXY", http),
            ("https_proxy", http),
            ("NO_PROXY", "localhost,127.0.0.1,::1"),
            ("no_proxy", "localhost,127.0.0.1,::1"),
        ] {
            assert_eq!(
                variables.get(name).map(String::as_str),
                Some(value),
                "{name}"
            );
        }
        assert_eq!(variables.len(), 8);
    }

    #[test]
    fn the_users_own_exceptions_are_kept_once() {
        let inherited = [
            "internal.example.com, 10.0.0.0/8".to_owned(),
            "localhost,.corp,internal.example.com".to_owned(),
        ];
        let variables = proxy_variables(&proxy(), &inherited);
        assert_eq!(
            variables["NO_PROXY"],
            "localhost,127.0.0.1,::1,internal.example.com,10.0.0.0/8,.corp"
        );
    }
}
