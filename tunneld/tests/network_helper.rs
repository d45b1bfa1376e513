//! Component tests of the network helper: run as root, in a network namespace of its own
//! (`unshare --net`, so the machine's routes are never touched) with a resolver file of the
//! test's, and spoken to on its socket as a tunneld speaks to it. What it hands out (a TUN
//! device), what it does for a user it serves (routes, the resolver) and undoes when the
//! connection closes, and what it refuses (users it does not serve, routes and names no
//! user may set, running without root).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kubedev::fd_passing;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

/// A hang, not a slow machine, is what this catches.
const LIVENESS: Duration = Duration::from_secs(30);
const ORIGINAL: &str = "nameserver 192.0.2.53\nsearch corp.example\n";

struct Helper {
    process: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Helper {
    /// Starts the helper for `users`, in a network namespace of its own, and waits for its
    /// socket.
    fn start(name: &str, users: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("helper-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("test dir");
        // The socket's directory must be one only root may change.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(dir.join("resolv.conf"), ORIGINAL).expect("resolv.conf");
        let socket = dir.join("network.sock");
        // The namespace has a route of its own, as a machine's LAN is, and checks sources
        // loosely on every device, as systemd sets it on many distributions.
        let mut command = Command::new("unshare");
        command
            .args(["--net", "--", "sh", "-c"])
            .arg(
                "ip link add lan0 type veth peer name lan1 && ip addr add 10.50.0.1/24 dev lan0 && \
                 ip link set lan0 up && ip link set lan1 up && \
                 echo 2 > /proc/sys/net/ipv4/conf/all/rp_filter && exec \"$@\"",
            )
            .arg("helper")
            .arg(env!("CARGO_BIN_EXE_tunneld"))
            .arg("network-helper")
            .arg("--socket")
            .arg(&socket)
            .arg("--resolv-conf")
            .arg(dir.join("resolv.conf"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stderr(std::fs::File::create(dir.join("helper.log")).expect("log"));
        for user in users {
            command.args(["--user", user]);
        }
        let process = command.spawn().expect("the helper starts");
        let helper = Self {
            process,
            dir,
            socket,
        };
        let deadline = Instant::now() + LIVENESS;
        while !helper.socket.exists() {
            assert!(Instant::now() < deadline, "no socket: {}", helper.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        helper
    }

    /// A setting of the helper's network namespace, under /proc/sys/net.
    fn setting(&self, path: &str) -> String {
        let pid = self.process.id().to_string();
        let path = format!("/proc/sys/net/{path}");
        let output = Command::new("nsenter")
            .args(["-t", &pid, "-n", "cat", &path])
            .output()
            .expect("nsenter runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// How many UDP datagrams the helper's network namespace took for a port nothing
    /// listens on (`Udp: NoPorts`): each one delivered to its sockets.
    fn udp_to_no_port(&self) -> u64 {
        let pid = self.process.id().to_string();
        let output = Command::new("nsenter")
            .args(["-t", &pid, "-n", "cat", "/proc/net/snmp"])
            .output()
            .expect("nsenter runs");
        let snmp = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
        let (names, values) = (udp.next().expect("names"), udp.next().expect("values"));
        let column = names.split_whitespace().position(|name| name == "NoPorts");
        let value = values.split_whitespace().nth(column.expect("NoPorts"));
        value.and_then(|v| v.parse().ok()).expect("a count")
    }

    /// The helper's rules in its network namespace's raw table.
    fn raw_rules(&self) -> String {
        let pid = self.process.id().to_string();
        let output = Command::new("nsenter")
            .args([
                "-t",
                &pid,
                "-n",
                "iptables",
                "-t",
                "raw",
                "-S",
                "PREROUTING",
            ])
            .output()
            .expect("nsenter runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The devices in the helper's network namespace.
    fn devices(&self) -> String {
        let pid = self.process.id().to_string();
        let output = Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip", "-o", "link", "show"])
            .output()
            .expect("nsenter runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("helper.log")).unwrap_or_default()
    }

    fn resolv_conf(&self) -> String {
        std::fs::read_to_string(self.dir.join("resolv.conf")).expect("resolv.conf")
    }

    /// Waits until the resolver file is `expected` again.
    fn wait_for_resolv_conf(&self, expected: &str) {
        let deadline = Instant::now() + LIVENESS;
        while self.resolv_conf() != expected {
            assert!(
                Instant::now() < deadline,
                "{}\n{}",
                self.resolv_conf(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).await.expect("connect")
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One exchange, framed as tunneld frames it (a big-endian u32 length, then JSON).
async fn ask(stream: &mut UnixStream, request: Value) -> Value {
    let body = serde_json::to_vec(&request).expect("json");
    let length = u32::try_from(body.len()).expect("short");
    stream
        .write_all(&length.to_be_bytes())
        .await
        .expect("write");
    stream.write_all(&body).await.expect("write");
    read_reply(stream).await
}

async fn read_reply(stream: &mut UnixStream) -> Value {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await.expect("a reply");
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).await.expect("a reply");
    serde_json::from_slice(&body).expect("json")
}

fn open_request(domain: &str) -> Value {
    json!({"request": "open", "domain": domain, "search": ["shop.svc.cluster.local", "svc.cluster.local"]})
}

/// The TUN device a descriptor is attached to, as the kernel reports it.
fn tun_name(file: &std::os::fd::OwnedFd) -> String {
    use std::os::fd::AsRawFd as _;
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).expect("fdinfo");
    info.lines()
        .find_map(|line| line.strip_prefix("iff:"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// The routes refused in a reply, with why.
fn refused_routes(routed: &Value) -> Vec<(String, String)> {
    routed["refused"]
        .as_array()
        .expect("refused")
        .iter()
        .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned())))
        .collect()
}

/// Asks for routes of every kind: only the allowed ones, clear of the machine's, are added.
async fn routes_are_checked(stream: &mut UnixStream) {
    let asked = [
        "10.96.0.0/16",
        "198.18.0.53/32",
        "0.0.0.0/0",
        "127.0.0.0/8",
        "10.50.0.0/25",
        "8.8.8.8/32",
        "192.0.2.53/32",
    ];
    let routed = ask(stream, json!({"request": "route", "routes": asked})).await;
    assert_eq!(routed["reply"], "routed", "{routed}");
    assert_eq!(
        routed["added"],
        json!(["10.96.0.0/16", "198.18.0.53/32"]),
        "{routed}"
    );
    let expected = [
        ("0.0.0.0/0", "never routed"),
        ("127.0.0.0/8", "never routed"),
        ("10.50.0.0/25", "overlaps this machine's route"),
        ("8.8.8.8/32", "outside the ranges this helper routes"),
        ("192.0.2.53/32", "outside the ranges this helper routes"),
    ];
    let refused = refused_routes(&routed);
    assert_eq!(refused.len(), expected.len(), "{routed}");
    for ((range, why), (expected_range, expected_why)) in refused.iter().zip(expected) {
        assert_eq!(range, expected_range, "{routed}");
        assert!(why.contains(expected_why), "{routed}");
    }
}

#[tokio::test]
async fn a_served_user_gets_a_device_routes_and_dns_all_undone_when_it_leaves() {
    let helper = Helper::start("serves", &["root"]);
    let mut stream = helper.connect().await;

    let opened = ask(&mut stream, open_request("cluster.local")).await;
    assert_eq!(opened["reply"], "opened", "{opened}\n{}", helper.log());
    assert_eq!(opened["upstream"], "192.0.2.53:53", "{opened}");
    let device = opened["device"].as_str().expect("a device name").to_owned();
    assert!(device.starts_with("kubedev-tun"), "{opened}");
    let mut byte = [0u8; 1];
    let (_, files) = fd_passing::receive_on(&stream, &mut byte)
        .await
        .expect("the device");
    assert_eq!(files.len(), 1);
    assert_eq!(
        tun_name(&files[0]),
        device,
        "the descriptor is that TUN device"
    );
    // No IPv6 (its user could write packets of any source, and a router advertisement
    // written into it would add routes), and no packet whose source is not routed back
    // into it.
    let ipv6 = helper.setting(&format!("ipv6/conf/{device}/disable_ipv6"));
    assert_eq!(ipv6, "1", "IPv6 disabled");
    let rp_filter = helper.setting(&format!("ipv4/conf/{device}/rp_filter"));
    assert_eq!(rp_filter, "1", "strict reverse path");
    let pointed = helper.resolv_conf();
    assert!(
        pointed.lines().find(|line| line.starts_with("nameserver"))
            == Some("nameserver 198.18.0.53")
            && pointed.contains("search shop.svc.cluster.local svc.cluster.local"),
        "{pointed}"
    );

    routes_are_checked(&mut stream).await;
    let again = ask(&mut stream, open_request("cluster.local")).await;
    assert_eq!(
        again["reply"], "refused",
        "one device per connection: {again}"
    );

    // The device goes with the connection, though this test still holds it open.
    drop(stream);
    helper.wait_for_resolv_conf(ORIGINAL);
    let deadline = Instant::now() + LIVENESS;
    while helper.devices().contains(&device) {
        assert!(Instant::now() < deadline, "{}", helper.devices());
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(files);
    // Another user may now have the resolver.
    let mut next = helper.connect().await;
    let opened = ask(&mut next, open_request("cluster.local")).await;
    assert_eq!(opened["resolver"]["via"], "resolv_conf", "{opened}");
}

#[tokio::test]
async fn what_could_reach_other_names_or_rewrite_the_resolver_is_refused() {
    let helper = Helper::start("refuses", &["root"]);
    let mut stream = helper.connect().await;
    let early = ask(
        &mut stream,
        json!({"request": "route", "routes": ["10.96.0.0/16"]}),
    )
    .await;
    assert_eq!(early["reply"], "refused", "{early}");
    for (domain, search, why) in [
        (
            "cluster.local\nnameserver 203.0.113.9",
            "",
            "not a domain name",
        ),
        ("-d.local", "", "not a domain name"),
        ("a b", "", "not a domain name"),
        ("com", "", "not a cluster domain this helper serves"),
        ("cluster.local", "github.com", "not under cluster.local"),
    ] {
        let search: Vec<&str> = [search].into_iter().filter(|s| !s.is_empty()).collect();
        let request = json!({"request": "open", "domain": domain, "search": search});
        let refused = ask(&mut stream, request).await;
        assert_eq!(refused["reply"], "refused", "{domain:?}: {refused}");
        let reason = refused["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{refused}");
    }
    assert_eq!(helper.resolv_conf(), ORIGINAL);

    // Eight connections at once per user; the ninth is told why.
    let mut held = Vec::new();
    for _ in 0..7 {
        let mut connection = helper.connect().await;
        // Answered: the helper counts it.
        let early = ask(&mut connection, json!({"request": "route", "routes": []})).await;
        assert_eq!(early["reply"], "refused", "{early}");
        held.push(connection);
    }
    let mut ninth = helper.connect().await;
    let reply = read_reply(&mut ninth).await;
    let reason = reply["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("holds 8 connections"), "{reply}");
}

#[tokio::test]
async fn a_user_it_does_not_serve_is_told_so_and_gets_nothing() {
    let helper = Helper::start("not-served", &["nobody"]);
    let mut stream = helper.connect().await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply["reply"], "refused", "{reply}");
    let reason = reply["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("serves nobody only, not uid 0"), "{reply}");
    assert_eq!(helper.resolv_conf(), ORIGINAL);
    assert!(helper.log().contains("refused uid 0"), "{}", helper.log());
    assert!(
        !helper.devices().contains("kubedev-tun"),
        "{}",
        helper.devices()
    );
}

#[test]
fn without_root_it_says_so_and_starts_nothing() {
    let dir = Path::new("/tmp");
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_tunneld"))
        .args(["network-helper", "--user", "nobody", "--socket"])
        .arg(dir.join(format!("helper-unprivileged-{}.sock", std::process::id())))
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("needs root: run it with sudo"), "{stderr}");
}

/// An IPv4 UDP datagram from `source` to 198.18.0.1 (the device's address) port 5555.
fn datagram_from(source: [u8; 4]) -> Vec<u8> {
    let mut packet = vec![
        0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, // version, lengths, TTL, UDP
    ];
    packet.extend(source);
    packet.extend([198, 18, 0, 1]);
    let sum = packet
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !u16::try_from((folded & 0xffff) + (folded >> 16)).expect("folded");
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend([0x30, 0x39, 0x15, 0xb3, 0, 12, 0, 0]); // 12345 -> 5555, no checksum
    packet.extend(b"ping");
    packet
}

#[tokio::test]
async fn a_packet_whose_source_is_not_routed_into_the_device_is_never_delivered() {
    use std::io::Write as _;
    let helper = Helper::start("spoofing", &["root"]);
    let mut stream = helper.connect().await;
    let opened = ask(&mut stream, open_request("cluster.local")).await;
    assert_eq!(opened["reply"], "opened", "{opened}\n{}", helper.log());
    let device = opened["device"].as_str().expect("a device name").to_owned();
    let mut byte = [0u8; 1];
    let (_, mut files) = fd_passing::receive_on(&stream, &mut byte)
        .await
        .expect("the device");
    let routed = ask(
        &mut stream,
        json!({"request": "route", "routes": ["10.96.0.0/16"]}),
    )
    .await;
    assert_eq!(routed["added"], json!(["10.96.0.0/16"]), "{routed}");
    let mut tun = std::fs::File::from(files.remove(0));

    // From the cluster's range: delivered (to no socket, which the kernel counts).
    let before = helper.udp_to_no_port();
    tun.write_all(&datagram_from([10, 96, 0, 7]))
        .expect("write");
    let deadline = Instant::now() + LIVENESS;
    while helper.udp_to_no_port() == before {
        assert!(
            Instant::now() < deadline,
            "the cluster's datagram never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // From the LAN's range, as the device's user could forge it: never delivered, though
    // the machine checks sources loosely.
    let before = helper.udp_to_no_port();
    for _ in 0..3 {
        tun.write_all(&datagram_from([10, 50, 0, 7]))
            .expect("write");
    }
    // The cluster's datagram after them: once it is counted, they have been through.
    tun.write_all(&datagram_from([10, 96, 0, 8]))
        .expect("write");
    while helper.udp_to_no_port() == before {
        assert!(
            Instant::now() < deadline,
            "the cluster's datagram never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        helper.udp_to_no_port(),
        before + 1,
        "only the cluster's datagram"
    );

    // The rule goes with the device.
    assert!(
        helper.raw_rules().contains(&device),
        "{}",
        helper.raw_rules()
    );
    drop(stream);
    while helper.raw_rules().contains(&device) {
        assert!(Instant::now() < deadline, "{}", helper.raw_rules());
        std::thread::sleep(Duration::from_millis(20));
    }
}
