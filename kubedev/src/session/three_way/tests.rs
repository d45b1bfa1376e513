use serde_json::{Value, json};

use super::restore;

fn app(env: Value) -> Value {
    json!({"name": "web", "image": "shop/web:1", "env": env,
           "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]})
}

fn agent() -> Value {
    json!({"name": "kubedev-agent", "image": "kubedev/agent:1",
           "env": [{"name": "KUBEDEV_AGENT_TOKEN", "value": "secret"}]})
}

fn template(labels: Value, containers: Value) -> Value {
    json!({"metadata": {"labels": labels}, "spec": {"containers": containers}})
}

/// The containers of `template`, and their names.
fn containers(template: &Value) -> (&Vec<Value>, Vec<&str>) {
    let containers = template["spec"]["containers"]
        .as_array()
        .expect("containers");
    let names = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    (containers, names)
}

fn original() -> Value {
    template(
        json!({"app": "web"}),
        json!([app(json!([{"name": "A", "value": "1"}])), {"name": "cache", "image": "redis"}]),
    )
}

fn applied() -> Value {
    template(
        json!({"app": "web", "kubedev.io/session": "alice"}),
        json!([app(json!([{"name": "A", "value": "1"}])), {"name": "cache", "image": "redis"}, agent()]),
    )
}

#[test]
fn what_nobody_else_touched_comes_back_exactly() {
    let restored = restore("template", &original(), &applied(), &applied());
    assert_eq!(restored.value, original());
    assert!(restored.changes.kept.is_empty() && restored.changes.overridden.is_empty());
    assert_eq!(restored.changes.describe(), "");
}

#[test]
fn a_teammates_env_var_image_and_annotation_stay_and_are_named() {
    let mut live = applied();
    live["spec"]["containers"][0]["env"] =
        json!([{"name": "A", "value": "1"}, {"name": "FLAG", "value": "on"}]);
    live["spec"]["containers"][1]["image"] = json!("redis:7");
    live["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/restartedAt": "now"});
    let restored = restore("template", &original(), &applied(), &live);

    let mut wanted = original();
    wanted["spec"]["containers"][0]["env"] = live["spec"]["containers"][0]["env"].clone();
    wanted["spec"]["containers"][1]["image"] = json!("redis:7");
    wanted["metadata"]["annotations"] = live["metadata"]["annotations"].clone();
    assert_eq!(restored.value["spec"], wanted["spec"]);
    assert_eq!(restored.value["metadata"], wanted["metadata"]);
    assert_eq!(
        restored.changes.kept,
        [
            "template.metadata.annotations",
            "template.spec.containers[web].env[FLAG]",
            "template.spec.containers[cache].image",
        ]
    );
    assert!(restored.changes.overridden.is_empty());
    assert!(
        restored
            .changes
            .describe()
            .starts_with("kept changes made during the session to template.metadata.annotations, ")
    );
}

#[test]
fn the_agent_goes_even_when_someone_changed_it_too() {
    // `kubectl set env deploy/web X=1` without -c sets it on every container.
    let mut live = applied();
    for container in live["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
    {
        container["env"]
            .as_array_mut()
            .map(|env| env.push(json!({"name": "X", "value": "1"})))
            .unwrap_or_else(|| container["env"] = json!([{"name": "X", "value": "1"}]));
    }
    let restored = restore("template", &original(), &applied(), &live);
    let (containers, names) = containers(&restored.value);
    assert_eq!(names, ["web", "cache"]);
    assert_eq!(
        containers[0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "X", "value": "1"}])
    );
    assert_eq!(restored.value["metadata"]["labels"], json!({"app": "web"}));
    assert!(restored.changes.overridden.is_empty());
}

#[test]
fn a_replaced_container_comes_back_where_it_was_next_to_a_teammates_change() {
    let replaced = template(
        json!({"app": "web", "kubedev.io/session": "alice"}),
        json!([{"name": "cache", "image": "redis"}, agent()]),
    );
    let live = template(
        json!({"app": "web", "kubedev.io/session": "alice"}),
        json!([{"name": "cache", "image": "redis:7"}, agent(), {"name": "debug", "image": "busybox"}]),
    );
    let restored = restore("template", &original(), &replaced, &live);
    let (containers, names) = containers(&restored.value);
    assert_eq!(names, ["web", "cache", "debug"]);
    assert_eq!(containers[0], original()["spec"]["containers"][0]);
    assert_eq!(containers[1]["image"], "redis:7");
    assert_eq!(
        restored.changes.kept,
        [
            "template.spec.containers[cache].image",
            "template.spec.containers[debug]"
        ]
    );
}

#[test]
fn where_both_changed_a_field_the_live_value_wins_and_is_named() {
    let mut applied = original();
    applied["spec"]["containers"][0]["ports"][0]["name"] = json!("kd-app-http");
    let mut live = applied.clone();
    live["spec"]["containers"][0]["ports"][0]["name"] = json!("web-http");
    let restored = restore("template", &original(), &applied, &live);
    assert_eq!(
        restored.value["spec"]["containers"][0]["ports"][0]["name"],
        "web-http"
    );
    assert_eq!(
        restored.changes.overridden,
        ["template.spec.containers[web].ports[8080/TCP].name"]
    );
    assert!(
        restored
            .changes
            .describe()
            .contains("changed by kubedev and by someone else: template.spec")
    );
}

#[test]
fn service_ports_go_back_to_their_numbers_and_a_new_port_stays() {
    let original = json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]);
    let applied = json!([{"name": "http", "port": 80, "targetPort": "kd-0", "protocol": "TCP"}]);
    let live = json!([
        {"name": "http", "port": 80, "targetPort": "kd-0", "protocol": "TCP"},
        {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}
    ]);
    let restored = restore("service/web ports", &original, &applied, &live);
    assert_eq!(
        restored.value,
        json!([
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}
        ])
    );
    assert_eq!(restored.changes.kept, ["service/web ports[metrics]"]);
}

#[test]
fn lists_without_a_key_are_whole_values() {
    let original = json!({"args": ["--a"]});
    let applied = json!({"args": ["--b"]});
    let live = json!({"args": ["--c"]});
    let restored = restore("t", &original, &applied, &live);
    assert_eq!(restored.value, live);
    assert_eq!(restored.changes.overridden, ["t.args"]);
    let restored = restore("t", &original, &applied, &applied);
    assert_eq!(restored.value, original);
}

#[test]
fn a_long_list_of_changes_is_cut_short() {
    let original = json!({});
    let live: serde_json::Map<String, Value> =
        (0..20).map(|i| (format!("k{i:02}"), json!(i))).collect();
    let restored = restore("t", &original, &original, &Value::Object(live));
    assert_eq!(restored.changes.kept.len(), 20);
    assert!(restored.changes.describe().ends_with("t.k11 and 8 more"));
}

#[test]
fn a_teammates_port_of_the_same_number_and_another_protocol_is_an_element_of_its_own() {
    // A single unnamed Service port; a teammate adds 80/UDP, which makes both take names.
    let original = json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]);
    let applied = json!([{"port": 80, "protocol": "TCP", "targetPort": "kd-8080"}]);
    let live = json!([
        {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": "kd-8080"},
        {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": 8080}
    ]);
    let restored = restore("ports", &original, &applied, &live);
    assert_eq!(
        restored.value[0]["targetPort"],
        json!(8080),
        "{}",
        restored.value
    );
    assert_eq!(restored.value[1], live[1]);

    // Container ports: 8080/UDP beside the 8080/TCP whose name the agent took.
    let original = json!([{"containerPort": 8080, "protocol": "TCP", "name": "http"}]);
    let applied = json!([{"containerPort": 8080, "protocol": "TCP"}]);
    let udp = json!({"containerPort": 8080, "protocol": "UDP", "name": "h3"});
    let live = json!([{"containerPort": 8080, "protocol": "TCP"}, udp.clone()]);
    let restored = restore("ports", &original, &applied, &live);
    assert_eq!(restored.value, json!([original[0].clone(), udp]));
}
