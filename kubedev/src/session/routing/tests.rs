use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
use serde_json::{Value, json};

use super::*;
use crate::mode::Mode;

fn applied() -> Value {
    json!({
        "metadata": {"labels": {"app": "web", "kubedev.io/session": "alice"}},
        "spec": {"containers": [
            {"name": "web", "ports": [{"name": "kd-app-http", "containerPort": 8080}]},
            {"name": "kubedev-agent", "ports": [{"name": "http", "containerPort": 7330}]}
        ]}
    })
}

fn record() -> Record {
    Record {
        name: "alice".into(),
        filter: None,
        wiretap: false,
        joined: Vec::new(),
        mode: Mode::Intercept,
        container: "web".into(),
        template: json!({}),
        applied: Some(applied()),
        services: Vec::new(),
        paused_flux: false,
        token_key: None,
        owner: None,
        replicas: None,
        managers: None,
    }
}

#[test]
fn a_template_as_the_session_wrote_it_is_in_place_whatever_else_changed() {
    let mut live = applied();
    live["spec"]["containers"][0]["env"] = json!([{"name": "FLAG", "value": "on"}]);
    assert_eq!(template_undone(&record(), &live), None);
}

#[test]
fn a_reapplied_template_is_named_for_what_it_took_back() {
    let mut live = applied();
    live["spec"]["containers"][0]["ports"][0]["name"] = json!("http");
    assert_eq!(
        template_undone(&record(), &live).as_deref(),
        Some("container web took back the port name \"http\" from the agent")
    );
    let mut live = applied();
    live["metadata"]["labels"] = json!({"app": "web"});
    assert_eq!(
        template_undone(&record(), &live).as_deref(),
        Some("the pod template lost the label kubedev.io/session")
    );
    let mut live = applied();
    live["spec"]["containers"]
        .as_array_mut()
        .expect("list")
        .pop();
    assert_eq!(
        template_undone(&record(), &live).as_deref(),
        Some("the agent container was removed from the pod template")
    );
}

#[test]
fn a_service_port_targeting_the_app_again_is_named() {
    let applied = json!([{"port": 80, "protocol": "TCP", "targetPort": "kd-8080"}]);
    assert_eq!(ports_undone(&applied, &applied), None);
    let live = json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]);
    assert_eq!(
        ports_undone(&applied, &live).as_deref(),
        Some("port 80 targets 8080 again, not the agent's \"kd-8080\"")
    );
    assert_eq!(
        ports_undone(&applied, &json!([])).as_deref(),
        Some("port 80 was removed")
    );
}

fn entry(
    manager: &str,
    operation: &str,
    second: u32,
    subresource: Option<&str>,
) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        time: Some(Time(
            format!("2026-12-05T10:00:{second:02}Z")
                .parse()
                .expect("time"),
        )),
        subresource: subresource.map(str::to_owned),
        ..ManagedFieldsEntry::default()
    }
}

#[test]
fn the_last_writer_is_the_newest_manager_but_for_status_writers() {
    let mut fields = vec![
        entry("kubectl-create", "Update", 1, None),
        entry(FIELD_MANAGER, "Update", 5, None),
        entry("kustomize-controller", "Apply", 9, None),
        entry("kube-controller-manager", "Update", 12, Some("status")),
    ];
    assert_eq!(
        last_writer(Some(&fields)).as_deref(),
        Some("kustomize-controller (Apply)")
    );
    // kubedev's own write after the session's: another run's (a teammate's leave).
    fields.push(entry(FIELD_MANAGER, "Update", 11, None));
    let said = last_writer(Some(&fields)).expect("a writer");
    assert!(said.starts_with("another run of kubedev"), "{said}");
    assert_eq!(last_writer(None), None);
}
