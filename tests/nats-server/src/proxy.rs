//! A loopback TCP proxy that a fault test can cut: it listens on a free `127.0.0.1` port and
//! forwards every connection to a target port; [`Proxy::cut`] drops every connection it carries
//! and closes new ones as soon as they are accepted, until [`Proxy::heal`].
//!
//! Plain threads and blocking sockets, so that it keeps forwarding whatever the test's runtime
//! is doing. Dropping the proxy closes its connections and stops its threads.
//!
//! ```no_run
//! # fn run() -> std::io::Result<()> {
//! let proxy = cqrs_test_server::Proxy::start(4222)?;
//! let url = format!("nats://127.0.0.1:{}", proxy.port());
//! proxy.cut(); // partitioned: connections dropped, new ones closed
//! proxy.heal(); // forwarding again
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    cut: bool,
    stopped: bool,
    next_id: u64,
    accepted: u64,
    refused: u64,
    severed: u64,
    /// Both sockets of every forwarded connection, by id.
    connections: HashMap<u64, [TcpStream; 2]>,
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shuts every forwarded connection down; their threads then end.
    fn sever(&self) -> usize {
        let mut state = self.state();
        let connections: Vec<_> = state.connections.drain().collect();
        state.severed += connections.len() as u64;
        drop(state);
        for (_, sockets) in &connections {
            for socket in sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        connections.len()
    }
}

/// Counts of what a [`Proxy`] did, for a test's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections forwarded to the target.
    pub accepted: u64,
    /// Connections closed on arrival because the proxy was cut (or the target was down).
    pub refused: u64,
    /// Forwarded connections dropped by [`Proxy::cut`] or [`Proxy::sever`].
    pub severed: u64,
    /// Connections being forwarded now.
    pub open: usize,
}

/// A cuttable loopback TCP proxy to `127.0.0.1:<target>`; stopped on drop.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("port", &self.port)
            .field("target", &self.shared.target)
            .field("cut", &self.is_cut())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Starts a proxy on a free loopback port that forwards to `127.0.0.1:target_port`.
    ///
    /// # Errors
    ///
    /// If no port can be bound or the acceptor thread cannot be started.
    pub fn start(target_port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            state: Mutex::new(State::default()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Self {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The port the proxy listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port it forwards to (on `127.0.0.1`).
    pub fn target_port(&self) -> u16 {
        self.shared.target.port()
    }

    /// Cuts the link: drops every connection it carries and closes new ones on arrival, until
    /// [`heal`](Self::heal). Returns how many connections were dropped.
    pub fn cut(&self) -> usize {
        self.shared.state().cut = true;
        self.shared.sever()
    }

    /// Forwards new connections again after [`cut`](Self::cut).
    pub fn heal(&self) {
        self.shared.state().cut = false;
    }

    /// Drops every connection it carries now, mid-request, but keeps accepting new ones (a
    /// connection reset). Returns how many connections were dropped.
    pub fn sever(&self) -> usize {
        self.shared.sever()
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.state().cut
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        let state = self.shared.state();
        ProxyStats {
            accepted: state.accepted,
            refused: state.refused,
            severed: state.severed,
            open: state.connections.len(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state();
            state.stopped = true;
            state.cut = true;
        }
        self.shared.sever();
        // Wake the acceptor up so that it sees `stopped`.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            CONNECT_TIMEOUT,
        );
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        let (stopped, cut) = {
            let state = shared.state();
            (state.stopped, state.cut)
        };
        if stopped {
            return;
        }
        let Ok(client) = incoming else { continue };
        if cut {
            shared.state().refused += 1;
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        // Connecting may take a moment; a failure (the target is down) closes the client.
        let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            shared.state().refused += 1;
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = forward(shared, client, server);
    }
}

/// Registers the connection and starts one copying thread per direction.
fn forward(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let id = {
        let mut state = shared.state();
        // Cut while connecting: drop it.
        if state.cut {
            state.refused += 1;
            drop(state);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return Ok(());
        }
        let id = state.next_id;
        state.next_id += 1;
        state.accepted += 1;
        state
            .connections
            .insert(id, [client.try_clone()?, server.try_clone()?]);
        id
    };
    for (from, to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name(format!("proxy-conn-{id}"))
            .spawn(move || copy(&shared, id, from, to))?;
    }
    Ok(())
}

/// Copies `from` to `to` until either side ends, then closes both and forgets the connection.
fn copy(shared: &Shared, id: u64, mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    shared.state().connections.remove(&id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server on a free port; returns the port.
    fn echo() -> u16 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().expect("clone");
                    let mut writer = stream;
                    let _ = io::copy(&mut reader, &mut writer);
                });
            }
        });
        port
    }

    fn round_trip(port: u16) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn forwards_cuts_and_heals() {
        let proxy = Proxy::start(echo()).expect("proxy");
        assert_eq!(round_trip(proxy.port()).expect("forwarded"), b"ping");

        let mut open = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
        open.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        open.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).expect("echo");
        assert!(proxy.cut() >= 1, "the open connection was dropped");
        let mut rest = Vec::new();
        let _ = open.write_all(b"more");
        assert!(
            open.read_to_end(&mut rest)
                .map_or(true, |_| rest.is_empty()),
            "nothing comes through a cut link"
        );
        assert!(round_trip(proxy.port()).is_err(), "new connections closed");
        assert!(proxy.stats().refused >= 1);

        proxy.heal();
        assert_eq!(round_trip(proxy.port()).expect("healed"), b"ping");
        let port = proxy.port();
        drop(proxy);
        assert!(round_trip(port).is_err(), "stopped on drop");
    }
}
