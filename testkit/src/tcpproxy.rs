//! A TCP proxy that can cut one client off from a server: for a controller
//! that loses its kube-apiserver while the rest of its cluster (another
//! replica, the Job controller) keeps it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    // Cut: the connection is accepted and nothing answers,
                    // as across a partition; the client's timeouts end it.
                    if cut.wait_for(|c| !*c).await.is_err() {
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // Open connections are dropped at the cut.
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        TcpProxy { addr, cut, task }
    }

    /// Cuts every connection, open or new, or heals the cut.
    pub fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}
