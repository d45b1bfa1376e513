//! A delay line: a workstation's route to the API server that adds a round-trip time, as a
//! cluster in a cloud region has. This kernel has no netem, so the delay is added here:
//! two TUN devices made by this process, one moved into the workstation's network
//! namespace, addressed as a point-to-point pair, and per direction a thread that reads
//! packets and one that writes each to the other device half the round trip after it
//! arrived. Plain threads sleep to within tens of microseconds (an async timer rounds to
//! whole milliseconds, which would add to every round trip). With a 65000-byte MTU the
//! packet rate stays low enough for that. The devices go when the line is dropped.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ip;

/// Large packets keep the rate of packets to copy low.
const MTU: u16 = 65000;
/// How often an idle thread looks whether the line was dropped.
const STOP_POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct DelayLine {
    /// Set to stop the copying; the devices close when the threads end.
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The addresses of one line's two ends, unique per `index` on this machine.
fn ends(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = 4 * (index % 16_000);
    let [_, _, high, low] = base.to_be_bytes();
    (
        Ipv4Addr::new(10, 203, high, low + 1),
        Ipv4Addr::new(10, 203, high, low + 2),
    )
}

impl DelayLine {
    /// Sends `netns`'s traffic for `destination` through a line that adds `rtt` to every
    /// round trip; `index` tells this line's devices and addresses apart from others'.
    pub fn install(netns: &str, destination: &str, rtt: Duration, index: u32) -> Self {
        let host_name = format!("kdd{}x{index}", std::process::id() % 100_000);
        let ns_name = format!("{host_name}n");
        let host_device = create_device(&host_name);
        let ns_device = create_device(&ns_name);
        let (host_end, ns_end) = ends(index);
        ip(&["link", "set", &ns_name, "netns", netns]);
        ip(&[
            "addr",
            "add",
            &host_end.to_string(),
            "peer",
            &ns_end.to_string(),
            "dev",
            &host_name,
        ]);
        ip(&["link", "set", &host_name, "up", "txqueuelen", "10000"]);
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &ns_end.to_string(),
            "peer",
            &host_end.to_string(),
            "dev",
            &ns_name,
        ]);
        ip(&[
            "-n",
            netns,
            "link",
            "set",
            &ns_name,
            "up",
            "txqueuelen",
            "10000",
        ]);
        // Replies come back on the line, not the way the host would route to the sender.
        let rp_filter = format!("/proc/sys/net/ipv4/conf/{host_name}/rp_filter");
        std::fs::write(rp_filter, "0").expect("rp_filter off on the line");
        ip(&[
            "-n",
            netns,
            "route",
            "replace",
            &format!("{destination}/32"),
            "dev",
            &ns_name,
            "src",
            &ns_end.to_string(),
        ]);

        let stop = Arc::new(AtomicBool::new(false));
        let one_way = rtt / 2;
        let (host, ns) = (Arc::new(host_device), Arc::new(ns_device));
        let mut threads = Vec::from(carry(host.clone(), ns.clone(), one_way, &stop));
        threads.extend(carry(ns, host, one_way, &stop));
        Self { stop, threads }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn create_device(name: &str) -> tun::Device {
    let mut config = tun::Configuration::default();
    config.tun_name(name).mtu(MTU);
    tun::create(&config).expect("a TUN device for the delay line (needs root)")
}

/// Copies every packet from `from` to `to`, each `delay` after it arrived, in order, until
/// `stop` is set: a reading and a writing thread.
fn carry(
    from: Arc<tun::Device>,
    to: Arc<tun::Device>,
    delay: Duration,
    stop: &Arc<AtomicBool>,
) -> [JoinHandle<()>; 2] {
    // held_tx: the reader -> the writer, each packet with the time it is due.
    let (held_tx, held_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reading = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; usize::from(MTU) + 4];
            while !stop.load(Ordering::Relaxed) {
                match from.recv_timeout(&mut buf, STOP_POLL) {
                    Ok(len) => {
                        if held_tx
                            .send((Instant::now() + delay, buf[..len].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        })
    };
    let stop = stop.clone();
    let writing = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match held_rx.recv_timeout(STOP_POLL) {
                Ok((due, packet)) => {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    if to.send(&packet).is_err() {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    });
    [reading, writing]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_has_its_own_pair_of_addresses() {
        assert_eq!(
            ends(0),
            (Ipv4Addr::new(10, 203, 0, 1), Ipv4Addr::new(10, 203, 0, 2))
        );
        assert_eq!(
            ends(70),
            (Ipv4Addr::new(10, 203, 1, 25), Ipv4Addr::new(10, 203, 1, 26))
        );
    }
}
