//! The multi-tenant server of the tenancy suites: the operator's account `OPS` (user `admin`)
//! holds the context `bank`; tenants `t1` and `t2` each have an account of their own (users `t1`
//! and `t2`) with exactly the access [`TenantAccess`] documents, and the operator runs the
//! tenant read service.

use cqrs_nats::async_nats::ConnectOptions;
use cqrs_nats::command::ServiceHandle;
use cqrs_nats::tenancy::TenantAccess;
use cqrs_nats::{JetStreamEventStore, StoreConfig, TenantReadService};
use cqrs_test_server::NatsServer;
use std::time::Duration;

use crate::BoxError;

/// The context of the tenancy suites.
pub const CONTEXT: &str = "bank";
/// The tenants, each with an account and a user of the same name (upper-cased account).
pub const TENANTS: [&str; 2] = ["t1", "t2"];
/// A denial must come from the server's violation report, not from this timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The access of `tenant`.
///
/// # Panics
///
/// If `tenant` cannot be a tenant of [`CONTEXT`] (the suites' tenants can).
pub fn access(tenant: &str) -> TenantAccess {
    TenantAccess::new(CONTEXT, Some(tenant)).unwrap_or_else(|e| panic!("tenant {tenant}: {e}"))
}

/// The password of `user`.
pub fn password(user: &str) -> String {
    format!("{user}-pass")
}

/// The server configuration: accounts, exports, imports and user permissions.
pub fn server_config() -> String {
    let exports: Vec<String> = TENANTS
        .iter()
        .map(|t| access(t).exports(&t.to_uppercase()))
        .collect();
    let tenants: Vec<String> = TENANTS
        .iter()
        .map(|t| {
            let user = format!("{{ user: {t}, password: \"{}\" }}", password(t));
            format!(
                "  {} {{\n{}\n  }}",
                t.to_uppercase(),
                access(t).account("OPS", &user)
            )
        })
        .collect();
    format!(
        "accounts {{\n  OPS {{\n    jetstream: enabled\n    users: [ {{ user: admin, password: \"{}\" }} ]\n    exports: [\n{}\n    ]\n  }}\n{}\n}}\n",
        password("admin"),
        exports.join("\n"),
        tenants.join("\n")
    )
}

/// The store configuration of the suites.
pub fn config() -> StoreConfig {
    StoreConfig::new(CONTEXT).request_timeout(REQUEST_TIMEOUT)
}

/// The server, the operator's store (which provisioned the context) and its tenant read
/// service.
#[derive(Debug)]
pub struct TenancyServer {
    /// The server; dropping it kills it.
    pub server: NatsServer,
    /// The operator's store.
    pub admin: JetStreamEventStore,
    /// The tenant read service, run by the operator.
    pub reads: ServiceHandle,
}

/// Starts the server, provisions the context as the operator and starts the read service.
pub async fn start() -> Result<TenancyServer, BoxError> {
    let server = NatsServer::builder()
        .config(server_config())
        .start()
        .await?;
    let admin =
        JetStreamEventStore::connect_with_options(server.url(), user_options("admin"), config())
            .await?;
    let reads = TenantReadService::new(&admin).spawn().await?;
    Ok(TenancyServer {
        server,
        admin,
        reads,
    })
}

/// Connect options of `user`.
pub fn user_options(user: &str) -> ConnectOptions {
    ConnectOptions::new().user_and_password(user.to_owned(), password(user))
}

/// `tenant`'s store: tenant-scoped, pages of 3 events (so a load spans pages).
pub async fn tenant_store(url: &str, tenant: &str) -> Result<JetStreamEventStore, BoxError> {
    let config = config().tenant_scoped_reads(true).load_batch(3);
    Ok(JetStreamEventStore::connect_with_options(url, user_options(tenant), config).await?)
}
