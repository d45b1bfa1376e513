use clap::Parser as _;

use super::*;

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    life: SessionLife,
}

fn flags(args: &[&str]) -> SessionLife {
    Flags::parse_from([&["plugin"], args].concat()).life
}

/// The sessions of a file that reads `text`, with paths relative to its directory.
fn sessions(text: &str, life: &SessionLife) -> anyhow::Result<Vec<FileSession>> {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let number = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kubedev-file-{}-{number}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = dir.join("kubedev.yaml");
    std::fs::write(&path, text).expect("written");
    let cluster = ClusterArgs {
        namespace: Some("shop".into()),
        ..ClusterArgs::default()
    };
    let read = read(&path, Mode::Intercept, &cluster, life).map(|sessions| {
        // Paths in the file are the file's directory's: compare them from there.
        sessions
            .into_iter()
            .map(|mut session| {
                let relative = |file: PathBuf| file.strip_prefix(&dir).map(Into::into);
                session.args.env_file = session.args.env_file.map(|f| relative(f).expect("in"));
                session
            })
            .collect()
    });
    std::fs::remove_dir_all(&dir).expect("removed");
    read
}

#[test]
fn each_session_gets_what_its_flags_would_give() {
    let text = "\
sessions:
  - workload: web
    ports: [8080, '9090:grpc']
    httpHeaders: {x-dev: alice}
    envFile: web.env
    envSyntax: sh
    toPod: [9901, 53/udp]
    command: [./server, --listen, ':8080']
  - workload: sts/db
    mode: ingest
    name: db-mine
    namespace: data
    mount: false
";
    let life = flags(&["--timeout", "90s", "--lease", "30s"]);
    let read = sessions(text, &life).expect("a valid file");
    let [web, db] = &read[..] else {
        panic!("two sessions")
    };
    assert_eq!(web.mode, Mode::Intercept);
    assert_eq!(web.workload.to_string(), "web");
    assert_eq!(web.name, default_name("web"));
    assert_eq!(web.cluster.namespace.as_deref(), Some("shop"));
    assert_eq!(web.mode_args.ports.len(), 2);
    let filter = web.mode_args.filter.as_ref().expect("a filter");
    assert_eq!(filter.headers, [("x-dev".to_owned(), "alice".to_owned())]);
    assert_eq!(web.args.env_file.as_deref(), Some(Path::new("web.env")));
    assert_eq!(web.args.env_syntax, EnvSyntax::Sh);
    assert_eq!(web.args.to_pod.len(), 2);
    assert_eq!(web.args.life.command, ["./server", "--listen", ":8080"]);
    assert_eq!(web.args.life.timeout, std::time::Duration::from_secs(90));
    assert_eq!(web.args.life.lease, std::time::Duration::from_secs(30));
    assert_eq!(db.mode, Mode::Ingest);
    assert_eq!(db.workload.to_string(), "statefulset/db");
    assert_eq!(db.args.life.name.as_deref(), Some("db-mine"));
    assert_eq!(db.cluster.namespace.as_deref(), Some("data"));
    assert_eq!(db.args.mount, Some(MountChoice::No));
}

#[test]
fn a_mistake_anywhere_refuses_the_whole_file_and_says_where() {
    let life = flags(&[]);
    for (text, said) in [
        ("sessions: []\n", "names no session"),
        ("sessions:\n  - workload: web\n    prots: [80]\n", "prots"),
        (
            "sessions:\n  - workload: web\n  - workload: api\n    mode: ingest\n    wiretap: true\n",
            "session 2 (api): wiretap is for intercept sessions only",
        ),
        (
            "sessions:\n  - workload: web\n    name: Web_1\n",
            "invalid session name",
        ),
        (
            "sessions:\n  - workload: web\n  - workload: deploy/web\n",
            "two sessions are named",
        ),
        (
            "sessions:\n  - workload: web\n    envSyntax: fish\n",
            "envSyntax: \"fish\"",
        ),
        (
            "sessions:\n  - workload: web\n    ports: [http]\n",
            "ports:",
        ),
        (
            "sessions:\n  - workload: web\n    envFile: ../web.env\n",
            "envFile: ../web.env is not a path in the sessions file's directory",
        ),
        (
            "sessions:\n  - workload: web\n    envJson: /etc/web.json\n",
            "envJson: /etc/web.json",
        ),
        (
            "sessions:\n  - workload: web\n    mount: /home/dev/bin\n",
            "mount: /home/dev/bin",
        ),
        (
            "sessions:\n  - workload: web\n    address: 10.0.0.5\n",
            "address: \"10.0.0.5\" is not this machine's loopback",
        ),
    ] {
        let refused = sessions(text, &life).err().expect(text);
        let refused = format!("{refused:#}");
        assert!(refused.contains(said), "{text}: {refused}");
    }
}

#[test]
fn a_command_and_detach_exclude_each_other() {
    let text = "sessions:\n  - workload: web\n    command: [make, test]\n";
    let refused = sessions(text, &flags(&["--detach"]))
        .err()
        .expect("refused");
    assert!(format!("{refused:#}").contains("--detach"), "{refused:#}");
}

/// The JSON Schema of a sessions file.
fn schema() -> String {
    let schema = schemars::schema_for!(SessionsFile);
    serde_json::to_string_pretty(&schema).expect("a schema is JSON") + "\n"
}

/// `KUBEDEV_WRITE_SCHEMA=1 cargo test -p kubedev-cli published_schema` writes it anew.
#[test]
fn the_published_schema_is_this_releases() {
    let published = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kubedev.schema.json");
    if std::env::var_os("KUBEDEV_WRITE_SCHEMA").is_some() {
        std::fs::write(&published, schema()).expect("written");
    }
    assert_eq!(
        std::fs::read_to_string(&published).unwrap_or_default(),
        schema(),
        "docs/kubedev.schema.json is out of date: write it with KUBEDEV_WRITE_SCHEMA=1 \
         cargo test -p kubedev-cli published_schema"
    );
}
