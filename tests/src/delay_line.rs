//! A delay line: a workstation's route to the API server that adds a round-trip time, as a
//! cluster in a cloud region has. This kernel has no netem, so the delay is added here:
//! two TUN devices made by this process, one moved into the workstation's network
//! namespace, addressed as a point-to-point pair, and a thread that copies each packet to
//! the other device after holding it for half the round trip. With a 65000-byte MTU the
//! packet rate stays low enough for that. The devices go when the line is dropped.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::workstation::ip;

/// Large packets keep the rate of packets to copy low.
const MTU: u16 = 65000;

#[derive(Debug)]
pub struct DelayLine {
    /// Dropped (or sent) to stop the copying; the devices close with the thread's runtime.
    stop_tx: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
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

        let (stop_tx, stop_rx) = oneshot::channel();
        let one_way = rtt / 2;
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("delay line runtime");
            runtime.block_on(async move {
                let host = Arc::new(host_device);
                let ns = Arc::new(ns_device);
                tokio::select! {
                    () = carry(host.clone(), ns.clone(), one_way) => {}
                    () = carry(ns, host, one_way) => {}
                    _ = stop_rx => {}
                }
            });
        });
        Self {
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        drop(self.stop_tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn create_device(name: &str) -> tun::AsyncDevice {
    let mut config = tun::Configuration::default();
    config.tun_name(name).mtu(MTU);
    tun::create_as_async(&config).expect("a TUN device for the delay line (needs root)")
}

/// Copies every packet from `from` to `to`, each `delay` after it arrived, in order.
async fn carry(from: Arc<tun::AsyncDevice>, to: Arc<tun::AsyncDevice>, delay: Duration) {
    // held_tx: the reader -> the writer, each packet with the time it is due.
    let (held_tx, mut held_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reading = async move {
        let mut buf = vec![0u8; usize::from(MTU) + 4];
        while let Ok(len) = from.recv(&mut buf).await {
            if held_tx
                .send((Instant::now() + delay, buf[..len].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let writing = async move {
        while let Some((due, packet)) = held_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.send(&packet).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reading, writing);
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
