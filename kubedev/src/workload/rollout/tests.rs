use super::*;
use serde_json::json;

fn pod(containers: &[&str], ready: bool, waiting: Option<&str>) -> Pod {
    let statuses: Vec<_> = containers
        .iter()
        .map(|name| {
            let state = match waiting {
                Some(reason) if *name == AGENT_CONTAINER => {
                    json!({"waiting": {"reason": reason, "message": "not found"}})
                }
                _ => json!({"running": {}}),
            };
            json!({"name": name, "image": "i", "imageID": "", "ready": ready,
                   "restartCount": 0, "state": state})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": containers.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()},
        "status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": statuses
        }
    }))
    .expect("pod")
}

#[test]
fn readiness_and_agent_presence_are_read_from_the_pod() {
    let injected = pod(&["web", AGENT_CONTAINER], true, None);
    assert!(has_agent(&injected) && is_ready(&injected));
    let plain = pod(&["web"], false, None);
    assert!(!has_agent(&plain) && !is_ready(&plain));
}

#[test]
fn an_agent_image_that_cannot_be_pulled_is_reported() {
    let failing = pod(&["web", AGENT_CONTAINER], false, Some("ImagePullBackOff"));
    let error = agent_failure(&failing).expect("reported");
    assert_eq!(
        error.to_string(),
        "the agent image cannot be pulled in pod p: ImagePullBackOff (not found)"
    );
    let starting = pod(&["web", AGENT_CONTAINER], false, Some("ContainerCreating"));
    assert!(agent_failure(&starting).is_none());
}

#[test]
fn an_agent_that_keeps_crashing_is_reported_with_its_last_exit() {
    let mut crashing = pod(&["web", AGENT_CONTAINER], false, Some("CrashLoopBackOff"));
    let statuses = crashing
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
        .expect("statuses");
    statuses[1].last_state = serde_json::from_value(json!({
        "terminated": {"exitCode": 1, "message": "port 8080 is taken\n"}
    }))
    .expect("state");
    let error = agent_failure(&crashing).expect("reported");
    assert_eq!(
        error.to_string(),
        "the agent keeps crashing in pod p (exit code 1: port 8080 is taken)"
    );
}

#[test]
fn a_pod_that_is_not_ready_says_why() {
    let crashing_app = pod(&["web", AGENT_CONTAINER], false, Some("ErrImagePull"));
    assert_eq!(
        why_not_ready(&crashing_app).as_deref(),
        Some("container kubedev-agent ErrImagePull: not found")
    );
    let probing = pod(&["web"], false, None);
    assert_eq!(
        why_not_ready(&probing).as_deref(),
        Some("container web runs but is not ready")
    );
    let unscheduled: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False",
            "message": "0/1 nodes are available: 1 Insufficient memory."
        }]}
    }))
    .expect("pod");
    assert_eq!(
        why_not_ready(&unscheduled).as_deref(),
        Some("not scheduled: 0/1 nodes are available: 1 Insufficient memory.")
    );
    assert_eq!(why_not_ready(&pod(&["web"], true, None)), None);
}

#[test]
fn progress_reads_like_kubectl_rollout() {
    let cases = [
        (
            (1, 3, 2, (0, None)),
            "1/3 pods ready, 2 old pods still running",
        ),
        (
            (2, 2, 0, (2, Some(30))),
            "2/2 pods ready, 2 old pods stopping (grace period 30 s)",
        ),
        (
            (0, 1, 1, (1, Some(5))),
            "0/1 pods ready, 1 old pod still running, 1 old pod stopping (grace period 5 s)",
        ),
    ];
    for ((ready, wanted, leftover, stopping), said) in cases {
        let state = Progress {
            ready,
            wanted,
            leftover,
            stopping,
            paused: None,
        };
        assert_eq!(state.to_string(), said);
    }
    let paused = Progress {
        ready: 1,
        wanted: 2,
        leftover: 1,
        stopping: (0, None),
        paused: Some("paused by its strategy (CanaryPauseStep)".into()),
    };
    assert_eq!(
        paused.to_string(),
        "1/2 pods ready, 1 old pod still running; the rollout is paused by its strategy \
         (CanaryPauseStep)"
    );
}
