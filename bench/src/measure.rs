//! The measurements, as blocking socket code so they run the same on the node and inside a
//! workstation namespace: each takes the addresses of the echo pod's ports as one path
//! reaches them ([`Target`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::processes::cpu_seconds;

/// The echo pod's ports as one path reaches them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    /// Sends the bytes asked for (9100).
    pub(crate) bulk: SocketAddr,
    /// Greets, then echoes (TCP 7000).
    pub(crate) echo: SocketAddr,
    /// Answers each datagram (UDP 9000); `None` where the path carries no UDP.
    pub(crate) udp: Option<SocketAddr>,
}

/// How much each measurement does (`BENCH_*` variables override).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) bulk_bytes: u64,
    pub(crate) connects: usize,
    pub(crate) round_trips: usize,
    pub(crate) udp_round_trips: usize,
    pub(crate) parallel_streams: usize,
    pub(crate) parallel_bytes_each: u64,
}

impl Sizes {
    /// The sizes one hop from the API server, as the `BENCH_*` variables change them.
    pub(crate) fn from_env() -> Self {
        Self {
            bulk_bytes: setting("BENCH_BULK_BYTES", 1 << 30),
            connects: setting("BENCH_CONNECTS", 1000) as usize,
            round_trips: setting("BENCH_ROUND_TRIPS", 1000) as usize,
            udp_round_trips: setting("BENCH_UDP_ROUND_TRIPS", 1000) as usize,
            parallel_streams: setting("BENCH_PARALLEL_STREAMS", 100) as usize,
            parallel_bytes_each: setting("BENCH_PARALLEL_BYTES_EACH", 16 << 20),
        }
    }

    /// The sizes over distance (`BENCH_DISTANCE_*`): fewer round trips, as each costs one
    /// RTT, and 8 parallel streams, as a developer's tools open.
    pub(crate) fn at_distance_from_env() -> Self {
        Self {
            bulk_bytes: setting("BENCH_DISTANCE_BULK_BYTES", 256 << 20),
            connects: setting("BENCH_DISTANCE_CONNECTS", 200) as usize,
            round_trips: setting("BENCH_DISTANCE_ROUND_TRIPS", 200) as usize,
            udp_round_trips: setting("BENCH_DISTANCE_UDP_ROUND_TRIPS", 200) as usize,
            parallel_streams: setting("BENCH_DISTANCE_PARALLEL_STREAMS", 8) as usize,
            parallel_bytes_each: setting("BENCH_DISTANCE_PARALLEL_BYTES_EACH", 32 << 20),
        }
    }
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one path measured.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) bulk_mib_s: f64,
    /// CPU time the path's own processes spent per GiB of the bulk transfer.
    pub(crate) bulk_cpu_s_per_gib: f64,
    /// The same bulk sent the other way, to the pod.
    pub(crate) upload_mib_s: f64,
    pub(crate) connect_p50: Duration,
    pub(crate) connect_p99: Duration,
    pub(crate) rtt_p50: Duration,
    pub(crate) rtt_p99: Duration,
    pub(crate) udp: Option<UdpRoundTrips>,
    pub(crate) parallel_mib_s: f64,
    /// Parallel streams that stopped making progress (counted, not waited for).
    pub(crate) parallel_stalled: usize,
}

/// A stream that receives nothing for this long is counted as stalled.
const NO_PROGRESS: Duration = Duration::from_secs(30);

/// UDP request/response, one datagram in flight at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UdpRoundTrips {
    pub(crate) per_s: f64,
    pub(crate) p50: Duration,
    /// Requests without an answer within [`UDP_ANSWER_WAIT`] (left out of the rate).
    pub(crate) lost: usize,
}

/// Moved through a path, untimed, before its bulk transfers: a port-forward opened a
/// moment ago rides a TCP connection still in slow start, with small buffers, which a
/// user's second transfer no longer sees (nor curl's best of 3 below).
const WARM_UP_BYTES: u64 = 32 << 20;

/// A UDP request not answered within this is counted lost.
const UDP_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Every measurement through one path; `busy` are the processes that carry the path
/// (kubectl; tunneld and the agent), whose CPU time the bulk transfer is charged.
pub(crate) fn run_all(target: Target, sizes: Sizes, busy: &[u32]) -> Results {
    fetch(target.bulk, WARM_UP_BYTES.min(sizes.bulk_bytes));
    let cpu_before = cpu_seconds(busy);
    let bulk_mib_s = download(target.bulk, sizes.bulk_bytes);
    let gib = sizes.bulk_bytes as f64 / f64::from(1u32 << 30);
    let bulk_cpu_s_per_gib = (cpu_seconds(busy) - cpu_before) / gib;
    let upload_mib_s = upload(target.bulk, sizes.bulk_bytes);
    let connects = connect_to_first_byte(target.echo, sizes.connects);
    let rtts = round_trips(target.echo, sizes.round_trips);
    let udp = target
        .udp
        .map(|udp| udp_round_trips(udp, sizes.udp_round_trips));
    let (parallel_mib_s, parallel_stalled) = parallel_download(
        target.bulk,
        sizes.parallel_streams,
        sizes.parallel_bytes_each,
    );
    Results {
        bulk_mib_s,
        bulk_cpu_s_per_gib,
        upload_mib_s,
        udp,
        connect_p50: percentile(&connects, 0.50),
        connect_p99: percentile(&connects, 0.99),
        rtt_p50: percentile(&rtts, 0.50),
        rtt_p99: percentile(&rtts, 0.99),
        parallel_mib_s,
        parallel_stalled,
    }
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

/// Receives `bytes` on one connection; returns MiB/s.
fn download(addr: SocketAddr, bytes: u64) -> f64 {
    let started = Instant::now();
    let received = fetch(addr, bytes);
    assert_eq!(received, bytes, "bulk transfer from {addr} was cut short");
    mib_per_s(bytes, started.elapsed())
}

/// Sends `bytes` on one connection, timed until the server says it has them all; returns
/// MiB/s.
fn upload(addr: SocketAddr, bytes: u64) -> f64 {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect to the bulk port");
    stream.set_read_timeout(Some(NO_PROGRESS)).expect("timeout");
    stream
        .write_all(format!("put {bytes}\n").as_bytes())
        .expect("request");
    let chunk = vec![0u8; 1024 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let len = chunk.len().min((bytes - sent) as usize);
        stream.write_all(&chunk[..len]).expect("upload");
        sent += len as u64;
    }
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .expect("the server's count");
    assert_eq!(
        answer.trim(),
        format!("received {bytes}"),
        "upload to {addr}"
    );
    mib_per_s(bytes, started.elapsed())
}

fn fetch(addr: SocketAddr, bytes: u64) -> u64 {
    let mut stream = TcpStream::connect(addr).expect("connect to the bulk port");
    stream.set_read_timeout(Some(NO_PROGRESS)).expect("timeout");
    stream
        .write_all(format!("{bytes}\n").as_bytes())
        .expect("request");
    let mut buf = vec![0u8; 1024 * 1024];
    let mut received = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return received,
            Ok(len) => received += len as u64,
        }
    }
}

/// New connections, each timed from connect() to the server's first byte (its greeting):
/// a path that accepts locally before it has reached the pod is not given credit for it.
fn connect_to_first_byte(addr: SocketAddr, count: usize) -> Vec<Duration> {
    (0..count)
        .map(|_| {
            let started = Instant::now();
            let stream = TcpStream::connect(addr).expect("connect to the echo port");
            let mut greeting = String::new();
            BufReader::new(&stream)
                .read_line(&mut greeting)
                .expect("greeting");
            started.elapsed()
        })
        .collect()
}

/// One byte there and back, `count` times, on one connection.
fn round_trips(addr: SocketAddr, count: usize) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).expect("connect to the echo port");
    stream.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut greeting = String::new();
    reader.read_line(&mut greeting).expect("greeting");
    let mut writer = stream;
    let mut byte = [0u8; 1];
    (0..count)
        .map(|_| {
            let started = Instant::now();
            writer.write_all(b"x").expect("send");
            reader.read_exact(&mut byte).expect("echo");
            started.elapsed()
        })
        .collect()
}

/// `count` datagrams to the UDP echo port, each sent once the previous one was answered.
fn udp_round_trips(addr: SocketAddr, count: usize) -> UdpRoundTrips {
    let any: SocketAddr = match addr.is_ipv4() {
        true => "0.0.0.0:0",
        false => "[::]:0",
    }
    .parse()
    .expect("an address");
    let socket = UdpSocket::bind(any).expect("a UDP socket");
    socket.connect(addr).expect("connect the UDP socket");
    socket
        .set_read_timeout(Some(UDP_ANSWER_WAIT))
        .expect("timeout");
    let mut answer = [0u8; 256];
    let mut answered = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        let request = format!("request {i}");
        let sent = Instant::now();
        socket.send(request.as_bytes()).expect("send");
        // An answer to an earlier, lost request is not this one's.
        loop {
            match socket.recv(&mut answer) {
                Ok(len) if answer[..len].ends_with(request.as_bytes()) => {
                    answered.push(sent.elapsed());
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    assert!(!answered.is_empty(), "no datagram to {addr} was answered");
    let lost = count - answered.len();
    let answering: Duration = started.elapsed() - UDP_ANSWER_WAIT * lost as u32;
    UdpRoundTrips {
        per_s: answered.len() as f64 / answering.as_secs_f64(),
        p50: percentile(&answered, 0.50),
        lost,
    }
}

/// `streams` downloads at once; returns the aggregate MiB/s of the streams that finished
/// and how many stalled.
fn parallel_download(addr: SocketAddr, streams: usize, bytes_each: u64) -> (f64, usize) {
    let started = Instant::now();
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || {
                let received = fetch(addr, bytes_each);
                (received, Instant::now())
            })
        })
        .collect();
    let results: Vec<(u64, Instant)> = workers
        .into_iter()
        .map(|w| w.join().expect("download"))
        .collect();
    let finished: Vec<&(u64, Instant)> = results
        .iter()
        .filter(|(received, _)| *received == bytes_each)
        .collect();
    let last = finished.iter().map(|(_, at)| *at).max().unwrap_or(started);
    let total: u64 = finished.iter().map(|(received, _)| received).sum();
    (mib_per_s(total, last - started), streams - finished.len())
}

pub(crate) fn percentile(samples: &[Duration], quantile: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted[index]
}

/// Keeps `count` flows open to the echo port (each has answered), for memory readings.
pub(crate) fn open_flows(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let stream = TcpStream::connect(addr).expect("connect");
            let mut greeting = String::new();
            BufReader::new(&stream)
                .read_line(&mut greeting)
                .expect("greeting");
            stream
        })
        .collect()
}
/// A duration as the report shows it, in milliseconds.
pub(crate) fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}
