use super::*;

fn app(user: Option<i64>, group: Option<i64>, privileged: bool) -> Container {
    Container {
        name: "web".into(),
        security_context: Some(SecurityContext {
            run_as_user: user,
            run_as_group: group,
            privileged: Some(privileged),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

#[test]
fn the_agent_takes_the_apps_user_but_never_its_privileges() {
    let security = agent_security(&app(Some(1000), Some(2000), true), None);
    assert_eq!(
        (security.run_as_user, security.run_as_group),
        (Some(1000), Some(2000))
    );
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let capabilities = security.capabilities.expect("capabilities");
    assert_eq!(
        (capabilities.add, capabilities.drop),
        (None, Some(vec!["ALL".into()]))
    );
    assert_eq!(security.run_as_non_root, Some(true));
}

#[test]
fn an_app_running_as_root_or_as_its_images_user_gets_the_agents_own_user() {
    for user in [None, Some(0)] {
        let security = agent_security(&app(user, None, false), None);
        assert_eq!(security.run_as_user, Some(AGENT_USER));
        assert_eq!(security.run_as_group, Some(AGENT_USER));
    }
    let pod = PodSecurityContext {
        run_as_user: Some(1001),
        ..PodSecurityContext::default()
    };
    let security = agent_security(&app(None, None, false), Some(&pod));
    assert_eq!(
        (security.run_as_user, security.run_as_group),
        (Some(1001), Some(0))
    );
}

#[test]
fn a_port_below_1024_opens_the_pods_unprivileged_ports_from_it() {
    let mut pod = PodSpec::default();
    allow_ports(&mut pod, [8080]);
    assert_eq!(pod.security_context, None, "nothing to allow");
    allow_ports(&mut pod, [8080, 443, 80]);
    let sysctls = pod
        .security_context
        .and_then(|s| s.sysctls)
        .expect("sysctls");
    assert_eq!(
        sysctls,
        [Sysctl {
            name: UNPRIVILEGED_PORT_START.into(),
            value: "80".into()
        }]
    );
}

#[test]
fn the_users_resources_go_over_the_defaults() {
    let requests = parse_resource_list("cpu=250m").expect("requests");
    let limits = parse_resource_list("memory=").expect("limits");
    let resources = agent_resources(&requests, &limits);
    let requested = resources.requests.expect("requests");
    assert_eq!(requested["cpu"], Quantity("250m".into()));
    assert_eq!(requested["memory"], Quantity("32Mi".into()));
    assert_eq!(resources.limits, None, "the memory limit taken off");
}

#[test]
fn resource_lists_are_read_as_kubectl_set_resources_takes_them() {
    let list = parse_resource_list("cpu=100m,memory=64Mi").expect("list");
    assert_eq!(list["cpu"], Quantity("100m".into()));
    assert_eq!(list["memory"], Quantity("64Mi".into()));
    assert!(parse_resource_list("gpu=1").is_err());
    assert!(parse_resource_list("cpu").is_err());
    assert!(parse_resource_list("memory=1Gi;rm").is_err());
    for bad in ["cpu=abc", "memory=-5Mi", "cpu=1Gi", "memory=12Q"] {
        assert!(parse_resource_list(bad).is_err(), "{bad}");
    }
    assert!(parse_resource_list("cpu=1.5,memory=2G,ephemeral-storage=1Ti").is_ok());
}

#[test]
fn a_request_above_its_limit_is_refused_before_the_api_server_would() {
    let over = agent_resources(
        &parse_resource_list("memory=1Gi").expect("requests"),
        &BTreeMap::new(),
    );
    let refused = check_agent_resources(&over).expect_err("1Gi over 512Mi");
    assert!(refused.contains("--agent-limits memory="), "{refused}");
    assert!(check_agent_resources(&default_agent_resources()).is_ok());
}
