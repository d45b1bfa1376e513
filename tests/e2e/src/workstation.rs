//! A "developer workstation" for e2e tests: a network namespace whose only route leads to
//! the API server, so cluster addresses are reachable there only through kubedev's tunnel,
//! as on a laptop. tunneld runs inside it; everything is removed when the value drops.

use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kubedev::control::{self, ControlRequest, DaemonStatus};
use kubedev::tunneld;

use crate::delay_line::DelayLine;
use crate::{TestCluster, ip};

static NEXT_INDEX: AtomicU32 = AtomicU32::new(1);
/// Unmounts, in the calling process's own mount namespace, every network namespace file
/// (see [`Workstation::long_lived`]), then runs its arguments.
const UNPIN_POD_NETNS: &str =
    r#"for ns in /run/netns/*; do umount -l "$ns" 2>/dev/null; done; exec "$@""#;

/// The unprivileged user systemd-resolved runs as in tests.
const NOBODY: u32 = 65534;

/// What the workstation's resolv.conf holds before tunneld: a nameserver with nothing
/// behind it, so names outside the cluster fail at once and nothing leaves the machine.
pub const ORIGINAL_RESOLV_CONF: &str = "nameserver 127.0.0.1\n";

#[derive(Debug)]
pub struct Workstation {
    pub netns: String,
    host_link: String,
    state_dir: PathBuf,
    /// tunneld's socket, log and state, and the plugins' runtime directory: closed to other
    /// users, as kubedev requires (the state directory is not: systemd-resolved, run as
    /// another user, reaches its bus there).
    runtime_dir: PathBuf,
    socket: PathBuf,
    pub tunneld_log: PathBuf,
    tunneld_pid: Option<u32>,
    /// Environment tunneld gets on top of the test's own.
    tunneld_env: Vec<(String, String)>,
    resolved: Option<SystemdResolved>,
    /// The route to the API server with an added round-trip time, if any.
    delay_line: Option<DelayLine>,
}

/// The name of the session the tests add.
const SESSION: &str = "e2e";

impl Workstation {
    /// A workstation one hop from the API server, with no added latency.
    pub fn create(cluster: &TestCluster) -> Self {
        Self::create_inner(cluster, None)
    }

    /// A workstation whose round trips to the API server take `rtt` longer, as a cluster
    /// in a cloud region is (see [`DelayLine`]).
    pub fn create_at_distance(cluster: &TestCluster, rtt: Duration) -> Self {
        Self::create_inner(cluster, Some(rtt))
    }

    fn create_inner(cluster: &TestCluster, rtt: Option<Duration>) -> Self {
        remove_abandoned();
        let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 100_000;
        let netns = format!("kdws-{pid}-{index}");
        let host_link = format!("kdh{pid}x{index}");
        let ns_link = format!("kdn{pid}x{index}");
        let subnet = format!("10.202.{}", (pid % 41 * 6 + index) % 250);
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link, "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("{subnet}.1/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{subnet}.2/30"),
            "dev",
            &ns_link,
        ]);
        ip(&["-n", &netns, "link", "set", &ns_link, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let api_server = cluster.api_server_ip();
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            &format!("{api_server}/32"),
            "via",
            &format!("{subnet}.1"),
        ]);
        let delay_line = rtt.map(|rtt| DelayLine::install(&netns, &api_server, rtt, index));
        let etc = PathBuf::from("/etc/netns").join(&netns);
        fs::create_dir_all(&etc).expect("create /etc/netns/NS");
        fs::write(etc.join("resolv.conf"), ORIGINAL_RESOLV_CONF).expect("write resolv.conf");
        let state_dir = std::env::temp_dir().join(format!("kubedev-{netns}"));
        fs::create_dir_all(&state_dir).expect("state dir");
        let runtime_dir = private_dir(&state_dir.join("run"));
        Self {
            tunneld_log: runtime_dir.join("tunneld.log"),
            socket: runtime_dir.join("tunneld.sock"),
            runtime_dir,
            netns,
            host_link,
            state_dir,
            tunneld_pid: None,
            tunneld_env: Vec::new(),
            resolved: None,
            delay_line,
        }
    }

    /// The start of a command for a process that stays up in the workstation (append the
    /// program and its arguments). `ip netns exec` gives it a copy of the host's mounts,
    /// including the network namespaces of the pods running then; a copy would keep
    /// containerd from removing them, so a pod deleted meanwhile (a StatefulSet's, during a
    /// rollout) would never finish terminating. The copy drops them before the program runs.
    pub fn long_lived(&self) -> Command {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            &self.netns,
            "sh",
            "-c",
            UNPIN_POD_NETNS,
            "workstation",
        ]);
        command
    }

    /// Runs a command inside the workstation.
    pub fn run(&self, command: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(command)
            .output()
            .expect("ip netns exec runs")
    }

    /// Runs a command inside the workstation and returns its stdout, panicking on failure.
    pub fn run_ok(&self, command: &[&str]) -> String {
        let output = self.run(command);
        assert!(
            output.status.success(),
            "{} failed: {}{}\ntunneld's log:\n{}",
            command.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// What the workstation's network looks like to everyone: every routing table (but for
    /// the link-local IPv6 routes the kernel adds as it pleases), and the resolver file.
    pub fn network_seen_by_all(&self) -> (String, String) {
        let routes = self.run_ok(&["ip", "route", "show", "table", "all"]);
        let routes: Vec<&str> = routes
            .lines()
            .filter(|route| !route.contains("fe80:"))
            .collect();
        (routes.join("\n"), self.resolv_conf())
    }

    /// What a root process in the workstation needs in its environment to reach its
    /// systemd-resolved, once started ([`Self::start_systemd_resolved`]).
    pub fn resolved_env(&self) -> &[(String, String)] {
        &self.tunneld_env
    }

    /// The workstation's /etc/resolv.conf.
    pub fn resolv_conf(&self) -> String {
        fs::read_to_string(
            PathBuf::from("/etc/netns")
                .join(&self.netns)
                .join("resolv.conf"),
        )
        .expect("read")
    }

    /// Starts tunneld in the workstation the way the plugins do (on demand, through the
    /// control socket), adds a session for the agents matching `selector` in `namespace`,
    /// and waits until the network is up and an agent is linked.
    pub async fn start_tunneld(
        &mut self,
        cluster: &TestCluster,
        namespace: &str,
        selector: &str,
        token: &str,
    ) {
        let mut start = self.long_lived();
        start
            .arg(tunneld_binary())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--kubeconfig")
            .arg(&cluster.admin_kubeconfig)
            .arg("--state-dir")
            .arg(self.runtime_dir.join("state"))
            .args(["--idle-exit-secs", "1"])
            .envs(self.tunneld_env.iter().map(|(k, v)| (k, v)))
            // KUBEDEV_TEST_TUNNELD_LOG=debug shows every flow when a test fails.
            .env(
                "KUBEDEV_LOG",
                std::env::var("KUBEDEV_TEST_TUNNELD_LOG").unwrap_or_else(|_| "info".into()),
            );
        tunneld::ensure_running(&self.socket, start, &self.tunneld_log)
            .await
            .expect("tunneld starts");
        let add = ControlRequest::AddSession {
            name: SESSION.into(),
            namespace: namespace.into(),
            agents: selector.into(),
            token: token.into(),
            forwards: Vec::new(),
            proxy: control::ProxyChoices::default(),
            to_pod: Vec::new(),
            owner: None,
        };
        tunneld::request(&self.socket, &add)
            .await
            .expect("session added");
        self.tunneld_pid = Some(self.status().await.pid);
        self.wait_for_log("cluster network on", Duration::from_secs(60));
        self.wait_for_log("linked to", Duration::from_secs(60));
    }

    /// The process id of the tunneld [`Workstation::start_tunneld`] started.
    pub fn tunneld_pid(&self) -> u32 {
        self.tunneld_pid.expect("tunneld was started")
    }

    /// tunneld's status, through its control socket.
    pub async fn status(&self) -> DaemonStatus {
        tunneld::status(&self.socket)
            .await
            .expect("tunneld answers with its status")
    }

    /// Ends the session, as a plugin does on leave; tunneld then exits by itself.
    pub async fn remove_session(&self) {
        let status = self.status().await;
        let added = status
            .sessions
            .iter()
            .find(|session| session.name == SESSION)
            .expect("the session is in tunneld");
        let remove = ControlRequest::RemoveSession {
            session: added.key(),
            owner: None,
            by_leave: false,
        };
        tunneld::request(&self.socket, &remove)
            .await
            .expect("session removed");
    }

    /// Waits until the tunneld process has exited.
    pub fn wait_for_tunneld_exit(&mut self, limit: Duration) {
        let pid = self.tunneld_pid.take().expect("tunneld was started");
        let deadline = Instant::now() + limit;
        // An exited child of this process stays a zombie ('Z') until reaped.
        while fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(
                Instant::now() < deadline,
                "tunneld is still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until tunneld's log contains `text`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tunneld never logged {text:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.tunneld_log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Runs a kubedev plugin (`kubectl-intercept`, ...) inside the workstation, as a
    /// developer would, against the cluster with the kubedev Role only. Its tunneld lives in
    /// the workstation's state directory.
    pub fn plugin(&self, cluster: &TestCluster, plugin: &str, args: &[&str]) -> Output {
        self.plugin_command(cluster, plugin, args)
            .output()
            .expect("plugin runs")
    }

    /// Starts a plugin in the background (`ip netns exec` becomes the plugin itself, so
    /// signals to the child reach it).
    pub fn spawn_plugin(
        &self,
        cluster: &TestCluster,
        plugin: &str,
        args: &[&str],
    ) -> std::process::Child {
        self.plugin_command(cluster, plugin, args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("plugin starts")
    }

    /// Starts a plugin in the background with its stderr going to `stderr`.
    pub fn spawn_plugin_logged(
        &self,
        cluster: &TestCluster,
        plugin: &str,
        args: &[&str],
        stderr: &std::path::Path,
    ) -> std::process::Child {
        self.plugin_command(cluster, plugin, args)
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(stderr).expect("the plugin's log"))
            .spawn()
            .expect("plugin starts")
    }

    /// Takes away the workstation's route to the API server for `outage`, then puts it back
    /// as it was: Wi-Fi dropping, a VPN reconnecting.
    pub fn cut_off_from_api_server(&self, cluster: &TestCluster, outage: Duration) {
        let api_server = format!("{}/32", cluster.api_server_ip());
        let route = self.run_ok(&["ip", "route", "show", &api_server]);
        self.run_ok(&["ip", "route", "del", &api_server]);
        std::thread::sleep(outage);
        let mut add = vec!["ip", "route", "add"];
        add.extend(route.split_whitespace());
        self.run_ok(&add);
    }

    /// Where the plugins run in this workstation keep their tunneld's socket, log and state
    /// (`KUBEDEV_RUNTIME_DIR`).
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// A file for this workstation's test to write (`name` in its state directory).
    pub fn file(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    /// The process id of the tunneld the plugins started, as `status` reports it.
    pub fn plugins_tunneld_pid(&self, cluster: &TestCluster, plugin: &str) -> u32 {
        let status = self.plugin_ok(cluster, plugin, &["status", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        status["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("no tunneld in {status}"))
    }

    /// `program ARGS` inside the workstation as the test developer (the kubedev Role only),
    /// with its tunneld's socket and state, and kubedev's settings file, in the
    /// workstation's directory; nothing says where tunneld or the agent image are, as on a
    /// user's machine.
    pub fn as_user(&self, cluster: &TestCluster, program: &Path, args: &[&str]) -> Command {
        let mut command = self.long_lived();
        command
            .arg(program)
            .args(args)
            .env("KUBECONFIG", &cluster.dev_kubeconfig)
            .env("KUBEDEV_RUNTIME_DIR", &self.runtime_dir)
            .env("KUBEDEV_CONFIG", self.state_dir.join("config.yaml"))
            .env("KUBEDEV_LOG", "info")
            .env_remove("KUBEDEV_TUNNELD")
            .env_remove("KUBEDEV_AGENT_IMAGE");
        command
    }

    /// The command [`Workstation::plugin`] runs, for a test to add to its environment.
    pub fn plugin_command(&self, cluster: &TestCluster, plugin: &str, args: &[&str]) -> Command {
        let mut command = self.long_lived();
        as_developer(&mut command, cluster, &self.runtime_dir, plugin, args);
        command
    }

    /// Runs a plugin and returns its stdout, panicking with its output on failure.
    pub fn plugin_ok(&self, cluster: &TestCluster, plugin: &str, args: &[&str]) -> String {
        let output = self.plugin(cluster, plugin, args);
        assert!(
            output.status.success(),
            "{plugin} {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A UDP server on 127.0.0.1:`port` inside the workstation that answers every datagram
    /// with `local <name>: <datagram>`; it stops when the value drops.
    pub fn serve_udp(&self, port: u16, name: &str) -> LocalUdpServer {
        let socket = self.inside(move || {
            std::net::UdpSocket::bind(("127.0.0.1", port)).expect("bind the local server")
        });
        // The thread looks at the flag between datagrams, at least this often.
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .expect("read timeout");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let prefix = format!("local {name}: ");
        std::thread::spawn(move || {
            let mut buf = [0u8; 65535];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let mut answer = prefix.clone().into_bytes();
                answer.extend_from_slice(&buf[..len]);
                let _ = socket.send_to(&answer, peer);
            }
        });
        LocalUdpServer { stop }
    }

    /// An HTTP server on 127.0.0.1:`port` inside the workstation that answers every request
    /// with `local <name>: <request line>`; it stops when the value drops.
    pub fn serve_http(&self, port: u16, name: &str) -> LocalServer {
        self.serve_http_at(Ipv4Addr::LOCALHOST.into(), port, name)
    }

    /// [`serve_http`](Self::serve_http) on `address` (`::1`, say) alone.
    pub fn serve_http_at(&self, address: IpAddr, port: u16, name: &str) -> LocalServer {
        let name = name.to_owned();
        let at = SocketAddr::from((address, port));
        self.serve_tcp(at, move |connection| answer_http(connection, &name))
    }

    /// [`serve_http`](Self::serve_http) in TLS, presenting the PEM certificate `cert` with
    /// the PEM `key`.
    pub fn serve_https(&self, port: u16, name: &str, cert: &str, key: &str) -> LocalServer {
        let config = tests_fixtures::tls::server_config(cert.as_bytes(), key.as_bytes())
            .expect("the local server's certificate");
        let name = name.to_owned();
        let at = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.serve_tcp(at, move |connection| {
            if let Ok(mut stream) = tests_fixtures::tls::accept(config.clone(), connection) {
                answer_http(&mut stream, &name);
                tests_fixtures::tls::close(&mut stream);
            }
        })
    }

    /// A TCP server on `at` inside the workstation that gives each connection to `serve`
    /// on a thread of its own; it stops when the value drops.
    fn serve_tcp(
        &self,
        at: SocketAddr,
        serve: impl Fn(std::net::TcpStream) + Clone + Send + 'static,
    ) -> LocalServer {
        let listener =
            self.inside(move || std::net::TcpListener::bind(at).expect("bind the local server"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let serving = listener.try_clone().expect("listener");
        std::thread::spawn(move || {
            for connection in serving.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(connection) = connection else { continue };
                let serve = serve.clone();
                std::thread::spawn(move || serve(connection));
            }
        });
        LocalServer {
            at,
            netns: self.netns.clone(),
            stop,
            _listener: listener,
        }
    }

    /// Serves the gRPC echo service (`tests_fixtures::grpc`) on 127.0.0.1:`port`
    /// inside the workstation, answering as `local NAME`, until the value drops. It runs
    /// on a thread of its own, so a test blocked on a command does not stall it.
    pub fn serve_grpc(&self, port: u16, name: &str) -> LocalGrpcServer {
        let listener = self.inside(move || {
            let listener =
                std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the local server");
            listener.set_nonblocking(true).expect("non-blocking");
            listener
        });
        let name = format!("local {name}");
        // stop_tx: the test -> the server's thread, when the server is dropped.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = tests_fixtures::grpc::serve(listener, name) => {}
                    _ = stop_rx => {}
                }
            });
        });
        LocalGrpcServer { _stop_tx: stop_tx }
    }

    /// Runs systemd-resolved inside the workstation, as the system resolver, on a D-Bus
    /// system bus of its own. Its settings file has no upstream or fallback servers, so it
    /// never asks anything outside the machine. tunneld, started after this, finds it.
    pub fn start_systemd_resolved(&mut self, cluster: &TestCluster) {
        let tools = cluster.dir.join("systemd-resolved");
        let bus_dir = self.state_dir.join("dbus");
        let runtime_dir = self.state_dir.join("run-systemd");
        fs::create_dir_all(&bus_dir).expect("bus dir");
        // What systemd would create for it (RuntimeDirectory=systemd/resolve).
        fs::create_dir_all(runtime_dir.join("resolve")).expect("runtime dir");
        std::os::unix::fs::chown(runtime_dir.join("resolve"), Some(NOBODY), Some(NOBODY))
            .expect("chown runtime dir");
        let bus_socket = bus_dir.join("system_bus_socket");
        let bus_config = bus_dir.join("system.conf");
        fs::write(&bus_config, bus_config_xml(&bus_socket)).expect("bus config");
        let bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", bus_config.display()))
            .args(["--nofork", "--nopidfile"])
            .spawn()
            .expect("dbus-daemon starts");
        let bus_address = format!("unix:path={}", bus_socket.display());
        wait_until(Duration::from_secs(10), || bus_socket.exists()).expect("dbus-daemon listens");

        // `ip netns exec` mounts /etc/netns/NS/* over /etc/*: resolved reads this settings
        // file; everything else in the workstation uses it as its resolver.
        let etc = PathBuf::from("/etc/netns").join(&self.netns);
        fs::create_dir_all(etc.join("systemd")).expect("etc/systemd");
        fs::write(
            etc.join("systemd/resolved.conf"),
            "[Resolve]\nDNS=\nFallbackDNS=\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\n",
        )
        .expect("resolved.conf");
        fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.53\nsearch .\n")
            .expect("resolv.conf");
        // resolved drops root for a user this machine does not have: run it unprivileged
        // with the capabilities it keeps (port 53 for its stub listener; dropping the rest).
        let script = format!(
            "for ns in /run/netns/*; do umount -l \"$ns\" 2>/dev/null; done; \
             mount --bind {runtime} /run/systemd && exec setpriv --reuid={NOBODY} \
             --regid={NOBODY} --clear-groups --inh-caps=+net_bind_service,+net_raw,+setpcap \
             --ambient-caps=+net_bind_service,+net_raw,+setpcap {bin}",
            runtime = runtime_dir.display(),
            bin = tools.join("systemd-resolved").display(),
        );
        let resolved = Command::new("ip")
            .args(["netns", "exec", &self.netns, "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus_address)
            .stderr(fs::File::create(self.state_dir.join("resolved.log")).expect("resolved log"))
            .spawn()
            .expect("systemd-resolved starts");
        let path = format!(
            "{}:{}",
            tools.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        self.tunneld_env = vec![
            ("DBUS_SYSTEM_BUS_ADDRESS".into(), bus_address),
            ("PATH".into(), path),
        ];
        self.resolved = Some(SystemdResolved {
            processes: vec![resolved, bus],
            runtime_dir,
        });
        let log = self.state_dir.join("resolved.log");
        wait_until(Duration::from_secs(10), || {
            self.resolvectl(&["status"]).status.success()
        })
        .unwrap_or_else(|()| {
            panic!(
                "systemd-resolved did not come up:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        });
    }

    /// Runs resolvectl against the workstation's systemd-resolved.
    pub fn resolvectl(&self, args: &[&str]) -> Output {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, "resolvectl"]);
        command
            .args(args)
            .envs(self.tunneld_env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("resolvectl runs")
    }

    /// Makes the workstation's resolv.conf what systemd-resolved currently offers, as the
    /// usual symlink to its stub-resolv.conf would.
    pub fn follow_resolved_stub_file(&self) -> String {
        let resolved = self.resolved.as_ref().expect("systemd-resolved runs");
        let stub = fs::read_to_string(resolved.runtime_dir.join("resolve/stub-resolv.conf"))
            .expect("resolved's stub-resolv.conf");
        fs::write(
            PathBuf::from("/etc/netns")
                .join(&self.netns)
                .join("resolv.conf"),
            &stub,
        )
        .expect("resolv.conf");
        stub
    }

    /// Runs `work` on a thread inside the workstation's network namespace: every socket it
    /// opens is the workstation's.
    pub fn inside<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = fs::File::open(format!("/run/netns/{}", self.netns)).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            work()
        })
        .join()
        .expect("work inside the workstation")
    }
}

impl Drop for Workstation {
    fn drop(&mut self) {
        if let Some(pid) = self.tunneld_pid.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // A tunneld the plugins started (a test that failed before its session ended).
        kill_tunnelds_in(&self.state_dir);
        drop(self.resolved.take());
        drop(self.delay_line.take());
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.netns));
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

/// Makes `dir` with mode 0700, as kubedev wants its runtime directory.
pub(crate) fn private_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
    dir.to_owned()
}

/// Kills every tunneld whose socket is in `dir`: a failed test leaves none behind.
pub(crate) fn kill_tunnelds_in(dir: &std::path::Path) {
    let _ = Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("tunneld --socket {}/", dir.display()),
        ])
        .status();
}

/// A server the test runs on the workstation.
#[derive(Debug)]
pub struct LocalServer {
    at: SocketAddr,
    netns: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _listener: std::net::TcpListener,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accepting thread so it sees the flag.
        if let Ok(netns) = fs::File::open(format!("/run/netns/{}", self.netns)) {
            let at = self.at;
            let _ = std::thread::spawn(move || {
                nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
                std::net::TcpStream::connect(at).ok()
            })
            .join();
        }
    }
}

/// A gRPC server the test runs on the workstation; it stops when dropped.
#[derive(Debug)]
pub struct LocalGrpcServer {
    _stop_tx: tokio::sync::oneshot::Sender<()>,
}

/// A UDP server the test runs on the workstation.
#[derive(Debug)]
pub struct LocalUdpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for LocalUdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer_http<S: std::io::Read + std::io::Write>(connection: S, name: &str) {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(connection);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Skip the headers; requests in these tests have no body.
        let mut last = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            last |= header.trim().eq_ignore_ascii_case("connection: close");
        }
        let body = format!("local {name}: {}\n", request_line.trim());
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        // As HTTP servers do, the server closes first when asked to: the client's side
        // then leaves no TIME_WAIT behind, so a client under load keeps its ports.
        let connection = reader.get_mut();
        if connection.write_all(response.as_bytes()).is_err() || connection.flush().is_err() || last
        {
            return;
        }
    }
}

/// systemd-resolved and its D-Bus daemon, stopped when dropped.
#[derive(Debug)]
struct SystemdResolved {
    processes: Vec<std::process::Child>,
    runtime_dir: PathBuf,
}

impl Drop for SystemdResolved {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// A system bus that lets every local process own and call anything: it exists only for
/// one test's resolved and tunneld.
fn bus_config_xml(socket: &std::path::Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

/// Polls `ready` until it holds; `Err` once `limit` has passed.
fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Removes the workstations of test processes that died without cleaning up (their
/// links would collide with new ones).
fn remove_abandoned() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = name
            .strip_prefix("kdws-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if owner
            .parse::<u32>()
            .is_ok_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists())
        {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
        }
    }
}

/// Appends `plugin` and `args` to `command`, run as the test developer (the kubedev Role in
/// each test namespace, nothing else) with its tunneld's socket and state in
/// `runtime_dir` and the agent image of the test cluster.
pub(crate) fn as_developer(
    command: &mut Command,
    cluster: &TestCluster,
    runtime_dir: &std::path::Path,
    plugin: &str,
    args: &[&str],
) {
    command
        .arg(workspace_binary(plugin))
        .args(args)
        .env("KUBECONFIG", &cluster.dev_kubeconfig)
        .env("KUBEDEV_TUNNELD", tunneld_binary())
        .env("KUBEDEV_RUNTIME_DIR", runtime_dir)
        .env("KUBEDEV_AGENT_IMAGE", crate::AGENT_IMAGE)
        .env("KUBEDEV_LOG", "info");
}

/// The tunneld binary under test (`make test-e2e` builds it first).
fn tunneld_binary() -> PathBuf {
    std::env::var_os("KUBEDEV_TUNNELD").map_or_else(|| workspace_binary("tunneld"), PathBuf::from)
}

/// A binary of the workspace (`make test-e2e` builds them first).
fn workspace_binary(name: &str) -> PathBuf {
    let path = crate::build_dir().join(name);
    assert!(
        path.exists(),
        "no {name} at {}: run `cargo build` first",
        path.display()
    );
    path
}

/// Every log (`*.log`, tunneld's) in `dir`, one after the other.
pub fn logs_in(dir: &Path) -> String {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
        .filter_map(|entry| fs::read_to_string(entry.path()).ok())
        .collect()
}
