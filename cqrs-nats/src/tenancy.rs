//! What a tenant needs on the NATS server: its own account, which imports from the operator's
//! account exactly the services that touch its own subjects, and a user whose permissions allow
//! exactly those.
//!
//! # Why accounts, not permissions alone
//!
//! In one shared account, any grant on a JetStream API subject that the stream answers — a
//! direct get of one's own aggregate, say — is enough to delete the whole stream: nats-server
//! checks the subject a client publishes to, never the reply subject it names, and the stream
//! sends its answer to that reply subject from inside the account, where
//! `$JS.API.STREAM.DELETE.<stream>` or `$JS.API.CONSUMER.DELETE.<stream>.<consumer>` is
//! executed as a request (checked on nats-server 2.15.1). Across an account boundary the reply
//! subject is replaced by a response subject of the exporting account, and the answer goes back
//! into the tenant's account, where it can reach nothing of the operator's.
//!
//! So the events, the projections, the dead letters and the buckets live in the operator's
//! account; each tenant's account imports the services [`TenantAccess::services`] lists, which
//! the operator's account exports to it alone; the tenant's user may publish to those and
//! subscribe to its inbox; the tenant's store is opened with
//! [`StoreConfig::tenant_scoped_reads`](crate::StoreConfig::tenant_scoped_reads)`(true)`; and an
//! operator runs the [`TenantReadService`](crate::TenantReadService).
//!
//! ```
//! use cqrs_nats::tenancy::TenantAccess;
//! let access = TenantAccess::new("bank", Some("acme"))?;
//! let config = format!(
//!     "accounts {{\n  OPS {{\n    jetstream: enabled\n    users: [{{ user: ops, password: secret }}]\n    exports: [\n{}\n    ]\n  }}\n  ACME {{\n{}\n  }}\n}}",
//!     access.exports("ACME"),
//!     access.account("OPS", "{ user: acme, password: secret2 }"),
//! );
//! assert!(config.contains("bank.reads.acme"));
//! # Ok::<(), cqrs_nats::SubjectError>(())
//! ```

use crate::subject::{SubjectError, Subjects, encode_tenant};

/// One service the operator's account exports to a tenant's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantService {
    /// The subject (with wildcards) the tenant publishes requests to.
    pub subject: String,
    /// Whether one request gets several answers (`response_type: stream` on the export).
    pub streamed: bool,
    /// What the tenant's store uses it for, and why it reaches only the tenant's data.
    pub purpose: &'static str,
}

/// The access one tenant of one context needs (see the module docs).
#[derive(Debug, Clone)]
pub struct TenantAccess {
    subjects: Subjects,
    tenant: Option<String>,
}

impl TenantAccess {
    /// The access of tenant `tenant` (`None`: the aggregates without a tenant) of `context`.
    pub fn new(context: &str, tenant: Option<&str>) -> Result<Self, SubjectError> {
        Ok(Self {
            subjects: Subjects::new(context)?,
            tenant: tenant.map(str::to_owned),
        })
    }

    /// The services the tenant's store uses, each naming the tenant's token where the subject
    /// is matched, so none reaches another tenant's subjects.
    pub fn services(&self) -> Vec<TenantService> {
        let context = self.subjects.context();
        let tenant = encode_tenant(self.tenant.as_deref());
        let stream = crate::layout::events_stream(context);
        let bucket = crate::layout::snapshots_bucket(context);
        let reads = self.subjects.tenant_reads(self.tenant.as_deref());
        vec![
            TenantService {
                subject: format!("{context}.events.{tenant}.>"),
                streamed: false,
                purpose: "append: the stream stores what is published to the tenant's own subjects; the answer is the append's acknowledgement",
            },
            TenantService {
                subject: self.subjects.guards(self.tenant.as_deref()),
                streamed: false,
                purpose: "read guards: a commit's carrier message for each of the tenant's aggregates it read but does not write (no event; it expires a second after it is stored)",
            },
            TenantService {
                subject: format!("$JS.API.DIRECT.GET.{stream}.{context}.events.*.{tenant}.>"),
                streamed: false,
                purpose: "an aggregate's last event (the head an append expects): a direct get by subject answers the last message of the subject in the request subject, and only the tenant's subjects match",
            },
            TenantService {
                subject: reads,
                streamed: true,
                purpose: "pages of events (loads, conflict and lost-ack resolution, read_all of the tenant): the tenant read service reads only subjects of the tenant its request subject names",
            },
            TenantService {
                subject: format!("$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{tenant}.>"),
                streamed: false,
                purpose: "load a snapshot: the last entry of one of the tenant's keys",
            },
            TenantService {
                subject: format!("$KV.{bucket}.{tenant}.>"),
                streamed: false,
                purpose: "save a snapshot: a compare-and-set publish to one of the tenant's keys (the bucket refuses roll-ups, so no key's message can purge the others)",
            },
        ]
    }

    /// What the tenant's user may publish: the imported services' subjects.
    pub fn publish_allow(&self) -> Vec<String> {
        self.services().into_iter().map(|s| s.subject).collect()
    }

    /// What the tenant's user may subscribe to: its connection's inbox, in its own account.
    pub fn subscribe_allow(&self) -> Vec<String> {
        vec!["_INBOX.>".to_owned()]
    }

    /// The `exports` entries of the operator's account, in nats-server configuration syntax,
    /// for the tenant's account `tenant_account`, one per line.
    pub fn exports(&self, tenant_account: &str) -> String {
        self.services()
            .iter()
            .map(|s| {
                let response = if s.streamed {
                    ", response_type: stream"
                } else {
                    ""
                };
                format!(
                    "      {{ service: \"{}\", accounts: [{tenant_account}]{response} }}",
                    s.subject
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The body of the tenant's account block in nats-server configuration syntax: `users`
    /// (each entry of `users`, e.g. `{ user: acme, password: "…" }`, given the tenant's
    /// permissions) and the `imports` from `operator_account`. No JetStream: the tenant's
    /// account keeps nothing of its own.
    pub fn account(&self, operator_account: &str, users: &str) -> String {
        let quoted = |subjects: Vec<String>| {
            subjects
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let permissions = format!(
            "permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }}",
            quoted(self.publish_allow()),
            quoted(self.subscribe_allow())
        );
        let users = users.trim().strip_suffix('}').map_or_else(
            || users.to_owned(),
            |u| format!("{}, {permissions} }}", u.trim_end()),
        );
        let imports = self
            .services()
            .iter()
            .map(|s| {
                format!(
                    "      {{ service: {{ account: {operator_account}, subject: \"{}\" }} }}",
                    s.subject
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("    users: [ {users} ]\n    imports: [\n{imports}\n    ]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_names_the_tenant() {
        let access = TenantAccess::new("bank", Some("t1")).unwrap_or_else(|e| panic!("{e}"));
        let services = access.services();
        assert_eq!(services.len(), 6);
        for service in &services {
            assert!(
                service.subject.split('.').any(|t| t == "t1"),
                "{}",
                service.subject
            );
            let wildcards: Vec<&str> = service
                .subject
                .split('.')
                .filter(|t| *t == "*" || *t == ">")
                .collect();
            // Only the partition token and the tail below the tenant are open.
            assert!(wildcards.len() <= 2, "{}", service.subject);
            assert!(!service.subject.contains("CONSUMER"), "{}", service.subject);
            assert!(!service.subject.contains("STREAM."), "{}", service.subject);
        }
        assert_eq!(services.iter().filter(|s| s.streamed).count(), 1);
        let odd = TenantAccess::new("bank", Some("a.b")).unwrap_or_else(|e| panic!("{e}"));
        assert!(odd.publish_allow()[0].starts_with("bank.events.a_2Eb.>"));
    }

    #[test]
    fn config_snippets_carry_the_permissions_and_imports() {
        let access = TenantAccess::new("bank", Some("t1")).unwrap_or_else(|e| panic!("{e}"));
        let account = access.account("OPS", "{ user: t1, password: p }");
        assert!(account.contains(
            "{ user: t1, password: p, permissions: { publish: { allow: [\"bank.events.t1.>\""
        ));
        assert_eq!(account.matches("account: OPS").count(), 6);
        let exports = access.exports("T1");
        assert_eq!(exports.matches("accounts: [T1]").count(), 6);
        assert_eq!(exports.matches("response_type: stream").count(), 1);
    }
}
