//! The app container's environment, for `OpenRequest::Environment`.

use std::collections::BTreeMap;

use kubedev_protocol::APP_ENV_PREFIX;

/// The app container's variables: the copies under [`APP_ENV_PREFIX`] (the kubelet resolved
/// them for this container exactly as for the app's), and the service links the kubelet
/// gives every container.
pub(crate) fn app_environment(
    all: impl Iterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    all.filter_map(|(name, value)| match name.strip_prefix(APP_ENV_PREFIX) {
        Some(app_name) => Some((app_name.to_owned(), value)),
        None if is_service_link(&name) => Some((name, value)),
        None => None,
    })
    .collect()
}

/// `WEB_SERVICE_HOST`, `WEB_SERVICE_PORT[_NAME]`, `WEB_PORT`, `WEB_PORT_80_TCP[_PROTO|_PORT|_ADDR]`.
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.contains("_SERVICE_PORT") {
        return true;
    }
    name.match_indices("_PORT").any(|(at, _)| {
        let rest = &name[at + "_PORT".len()..];
        let Some(rest) = rest.strip_prefix('_') else {
            return rest.is_empty();
        };
        let (number, protocol) = rest.split_once('_').unwrap_or((rest, ""));
        let protocol = protocol.split('_').next().unwrap_or("");
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && matches!(protocol, "TCP" | "UDP" | "SCTP")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_the_apps_copies_and_service_links() {
        let all = [
            ("KUBEDEV_APP_GREETING", "hello"),
            ("KUBEDEV_APP_DB_PASSWORD", "s3cret"),
            ("KUBEDEV_AGENT_TOKEN", "t"),
            ("PATH", "/bin"),
            ("HOSTNAME", "web-1"),
            ("ECHO_SERVICE_HOST", "10.96.0.20"),
            ("ECHO_SERVICE_PORT_HTTP", "8080"),
            ("ECHO_PORT", "tcp://10.96.0.20:8080"),
            ("ECHO_PORT_8080_TCP_ADDR", "10.96.0.20"),
            ("MY_PORTAL", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let env = app_environment(all.into_iter());
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "DB_PASSWORD",
                "ECHO_PORT",
                "ECHO_PORT_8080_TCP_ADDR",
                "ECHO_SERVICE_HOST",
                "ECHO_SERVICE_PORT_HTTP",
                "GREETING"
            ]
        );
        assert_eq!(env["DB_PASSWORD"], "s3cret");
    }
}
