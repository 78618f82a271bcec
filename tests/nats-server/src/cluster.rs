//! A JetStream cluster on loopback whose every route, and every client connection that wants
//! it, runs through a [`Proxy`]: a fault test can isolate one node from the others, drop
//! clients' connections, pause (SIGSTOP) or kill (SIGKILL) any node, or all of them at once.
//!
//! Node `i` (0-based, named `n{i+1}`) reaches node `j` through its own proxy `i → j`, so cutting
//! the proxies from and to a node isolates it. Each node advertises a route address that closes
//! every connection, so no node learns a direct address of another by gossip and every route
//! goes through the proxies. Clients are not told other nodes' addresses either
//! (`no_advertise`): a client uses the URLs it was given.
//!
//! ```no_run
//! # async fn run() -> Result<(), cqrs_test_server::TestServerError> {
//! use cqrs_test_server::{ProxiedCluster, SyncInterval};
//! let mut cluster = ProxiedCluster::builder(3)
//!     .sync_interval(SyncInterval::Always)
//!     .start()
//!     .await?;
//! let urls = cluster.client_urls(); // through the client proxies
//! cluster.isolate(0); // n1 cut off from n2 and n3
//! cluster.heal();
//! cluster.server_mut(1).pause()?; // SIGSTOP
//! cluster.server_mut(1).resume()?; // SIGCONT
//! cluster.kill_all(); // power loss
//! cluster.restart_all().await?;
//! # Ok(()) }
//! ```

use crate::{NatsServer, Proxy, TestServerError};
use std::path::PathBuf;

/// When the servers' JetStream stores flush writes to disk (`jetstream { sync_interval }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncInterval {
    /// nats-server's default: written data is fsynced every two minutes, so an acknowledged
    /// write may exist only in memory (the server's buffers, the OS's page cache) until then.
    #[default]
    Default,
    /// `sync_interval: always`: every write is fsynced before it is acknowledged.
    Always,
}

/// Options of a [`ProxiedCluster`].
#[derive(Debug, Clone)]
pub struct ProxiedClusterBuilder {
    size: usize,
    sync: SyncInterval,
    config: String,
}

impl ProxiedClusterBuilder {
    /// When the servers fsync; [`SyncInterval::Default`] unless set.
    #[must_use]
    pub fn sync_interval(mut self, sync: SyncInterval) -> Self {
        self.sync = sync;
        self
    }

    /// Adds configuration to every server's file (top level, e.g. `max_payload: 65536`).
    #[must_use]
    pub fn config(mut self, content: impl Into<String>) -> Self {
        self.config.push_str(&content.into());
        self.config.push('\n');
        self
    }

    /// Starts the proxies and the servers. Every server accepts clients when this returns; the
    /// JetStream meta leader may take a few more seconds to be elected, so retry the first
    /// JetStream request.
    ///
    /// # Errors
    ///
    /// If a port or proxy cannot be had, or a server does not start.
    pub async fn start(self) -> Result<ProxiedCluster, TestServerError> {
        let io = |source| TestServerError::Io {
            bin: PathBuf::from("nats-server"),
            source,
        };
        let size = self.size;
        // Held until the servers start, so that the proxies started meanwhile cannot be given
        // one of these ports.
        let held = (0..size)
            .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        let cluster_ports = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        let mut routes = Vec::new();
        for from in 0..size {
            for to in (0..size).filter(|to| *to != from) {
                routes.push(Route {
                    from,
                    to,
                    proxy: Proxy::start(cluster_ports[to]).map_err(io)?,
                });
            }
        }
        let mut advertised = Vec::with_capacity(size);
        for port in &cluster_ports {
            let sink = Proxy::start(*port).map_err(io)?;
            sink.cut();
            advertised.push(sink);
        }
        let jetstream = match self.sync {
            SyncInterval::Default => "",
            SyncInterval::Always => "jetstream { sync_interval: always }\n",
        };
        drop(held);
        let mut servers = Vec::with_capacity(size);
        for (index, port) in cluster_ports.iter().enumerate() {
            let route_urls: Vec<String> = routes
                .iter()
                .filter(|r| r.from == index)
                .map(|r| format!("\"nats-route://127.0.0.1:{}\"", r.proxy.port()))
                .collect();
            let config = format!(
                "server_name: n{}\n{jetstream}{}cluster {{\n  name: proxied\n  listen: \"127.0.0.1:{port}\"\n  advertise: \"127.0.0.1:{}\"\n  no_advertise: true\n  routes: [{}]\n}}\n",
                index + 1,
                self.config,
                advertised[index].port(),
                route_urls.join(", ")
            );
            servers.push(NatsServer::builder().config(config).start().await?);
        }
        let clients = servers
            .iter()
            .map(|s| Proxy::start(s.port()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        Ok(ProxiedCluster {
            servers,
            routes,
            clients,
            _advertised: advertised,
        })
    }
}

struct Route {
    from: usize,
    to: usize,
    proxy: Proxy,
}

/// A JetStream cluster whose routes and client connections run through cuttable proxies;
/// servers killed, proxies stopped and directories removed on drop.
pub struct ProxiedCluster {
    servers: Vec<NatsServer>,
    routes: Vec<Route>,
    clients: Vec<Proxy>,
    _advertised: Vec<Proxy>,
}

impl std::fmt::Debug for ProxiedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxiedCluster")
            .field("servers", &self.servers)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl ProxiedCluster {
    /// Options for a cluster of `size` servers.
    pub fn builder(size: usize) -> ProxiedClusterBuilder {
        ProxiedClusterBuilder {
            size,
            sync: SyncInterval::Default,
            config: String::new(),
        }
    }

    /// The number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Server `index` (0-based; its name is `n{index+1}`).
    ///
    /// # Panics
    ///
    /// If there is no such server.
    pub fn server(&self, index: usize) -> &NatsServer {
        &self.servers[index]
    }

    /// Server `index`, to kill, restart, pause or resume it.
    ///
    /// # Panics
    ///
    /// If there is no such server.
    pub fn server_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.servers[index]
    }

    /// The name of server `index`: `n{index+1}`.
    pub fn server_name(index: usize) -> String {
        format!("n{}", index + 1)
    }

    /// The index of the server named `name` (`n1` is 0), if it is one of the cluster's.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .filter(|i| *i < self.servers.len())
    }

    /// The servers' own client URLs, bypassing the client proxies.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Client URLs through the client proxies, one per server in order.
    pub fn client_urls(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.port()))
            .collect()
    }

    /// The client proxy of server `index`.
    ///
    /// # Panics
    ///
    /// If there is no such server.
    pub fn client_proxy(&self, index: usize) -> &Proxy {
        &self.clients[index]
    }

    /// The proxy that server `from` reaches server `to` through, if both exist and differ.
    pub fn route_proxy(&self, from: usize, to: usize) -> Option<&Proxy> {
        self.routes
            .iter()
            .find(|r| r.from == from && r.to == to)
            .map(|r| &r.proxy)
    }

    /// Cuts server `index` off from the others (both directions), until [`heal`](Self::heal).
    /// Its clients stay connected to it. Returns how many route connections were dropped.
    pub fn isolate(&self, index: usize) -> usize {
        self.routes
            .iter()
            .filter(|r| r.from == index || r.to == index)
            .map(|r| r.proxy.cut())
            .sum()
    }

    /// Reconnects every route that [`isolate`](Self::isolate) cut.
    pub fn heal(&self) {
        for route in &self.routes {
            route.proxy.heal();
        }
    }

    /// Kills every server at once (SIGKILL, paused or not): a power loss, as far as the
    /// processes go — the OS's page cache survives.
    pub fn kill_all(&mut self) {
        for server in &mut self.servers {
            server.kill();
        }
    }

    /// Starts again every server that is not running, on its ports and store directory.
    ///
    /// # Errors
    ///
    /// If a server does not start.
    pub async fn restart_all(&mut self) -> Result<(), TestServerError> {
        for server in &mut self.servers {
            if server.pid().is_none() {
                server.restart().await?;
            }
        }
        Ok(())
    }

    /// Resumes every paused server.
    ///
    /// # Errors
    ///
    /// If `kill -CONT` fails.
    pub fn resume_all(&mut self) -> Result<(), TestServerError> {
        for server in &mut self.servers {
            server.resume()?;
        }
        Ok(())
    }
}

impl Drop for ProxiedCluster {
    fn drop(&mut self) {
        // Servers first: a stopped proxy would make their routes flap while they die.
        for server in &mut self.servers {
            let _ = server.resume();
            server.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The established connections from `pid` to `127.0.0.1:<port>` for any of `ports`, read
    /// with `ss`; `None` when `ss` is not available.
    fn direct_connections(ports: &[u16]) -> Option<usize> {
        let out = std::process::Command::new("ss")
            .args(["-tn", "state", "established"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Some(
            text.lines()
                .filter(|line| {
                    line.split_whitespace()
                        .nth(3)
                        .and_then(|peer| peer.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                        .is_some_and(|p| ports.contains(&p))
                })
                .count(),
        )
    }

    #[tokio::test]
    async fn routes_run_through_the_proxies_and_can_be_cut() {
        let cluster = ProxiedCluster::builder(3)
            .sync_interval(SyncInterval::Always)
            .start()
            .await
            .expect("cluster");
        // Give the routes time to form (and any gossip to happen).
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let proxied: usize = cluster.routes.iter().map(|r| r.proxy.stats().open).sum();
        assert!(proxied >= 3, "routes through the proxies: {proxied}");
        // Connections to the cluster ports come only from the proxies: as many as they carry.
        let cluster_ports: Vec<u16> = cluster
            .routes
            .iter()
            .map(|r| r.proxy.target_port())
            .collect();
        if let Some(direct) = direct_connections(&cluster_ports) {
            assert_eq!(direct, proxied, "a route bypasses the proxies");
        }
        assert!(cluster.isolate(0) > 0, "n1's routes were dropped");
        for r in cluster.routes.iter().filter(|r| r.from == 0 || r.to == 0) {
            assert!(r.proxy.is_cut());
        }
        cluster.heal();
        assert!(cluster.routes.iter().all(|r| !r.proxy.is_cut()));
    }
}
