//! Subjects of aggregate streams and the token codec that keeps user data out of the subject
//! syntax.
//!
//! Every aggregate instance has its own subject. Writers publish to
//!
//! ```text
//! <context>.events.<tenant>.<AggregateType>.<id>
//! ```
//!
//! and the context's stream stores each event under the same subject with a partition token in
//! front of the tenant (a `subject_transform` of the stream, applied by the server on ingest):
//!
//! ```text
//! <context>.events.<partition>.<tenant>.<AggregateType>.<id>
//! ```
//!
//! The partition is FNV-1a (32 bit) of the tenant, type and id tokens concatenated, modulo the
//! stream's partition count — what the server's `{{partition(n,1,2,3)}}` transform computes, so
//! [`Subjects::stored`] finds an aggregate's stored subject without asking. The partition count
//! is fixed when the stream is created (changing it would move an aggregate's later events to
//! another subject). Partitions let several workers share a projection while each aggregate
//! stays in order (one consumer per partition, see [`crate::projection`]); the
//! `Nats-Expected-Last-Subject-Sequence` check works on the stored subject, so optimistic
//! concurrency is unaffected.
//!
//! `<context>` and `<AggregateType>` are names chosen by the programmer and must match
//! `[A-Za-z0-9_-]{1,64}` (checked, see [`validate_name`]). `<tenant>` and `<id>` come from users
//! and are encoded with [`encode_token`]:
//!
//! | input | token |
//! |---|---|
//! | no tenant (`None`) | `_` |
//! | empty string | `__` |
//! | `A-Z`, `a-z`, `0-9`, `-` | kept as they are |
//! | any other byte of the UTF-8 encoding (including `_`) | `_XX`, two upper-case hex digits |
//!
//! So `order.1` becomes `order_2E1`, `a b` becomes `a_20b`, `été` becomes `_C3_A9t_C3_A9`. A token
//! is never empty and holds only `[A-Za-z0-9_-]`: no `.`, `*`, `>`, whitespace, `$` or non-ASCII
//! can reach a subject. Decoding is exact and strict ([`decode_token`] rejects anything
//! [`encode_token`] would not produce), so every aggregate has exactly one subject and no two
//! aggregates share one.

use std::fmt::Write as _;

/// The token of "no tenant".
pub const NO_TENANT_TOKEN: &str = "_";
/// The token of the empty string.
pub const EMPTY_TOKEN: &str = "__";
/// Longest context or aggregate type name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Partitions of a new context's stream unless [`crate::StoreConfig::partitions`] says
/// otherwise: the most workers one projection can spread over.
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Most partitions a stream can have.
pub const MAX_PARTITIONS: u32 = 1024;
/// Longest subject the store writes. The server's protocol control line (`max_control_line`,
/// 4096 bytes by default) must hold the subject plus a reply inbox; anything longer is refused
/// with a typed error before it is sent.
pub const MAX_SUBJECT_LEN: usize = 2048;

/// Why a name, token or subject is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// A context or aggregate type name is empty, too long or has a character outside
    /// `[A-Za-z0-9_-]`.
    #[error(
        "{what} `{name}` is not a valid name: use 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9_-]"
    )]
    InvalidName {
        /// Which name (`context`, `aggregate type`).
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// The encoded subject is longer than [`MAX_SUBJECT_LEN`].
    #[error(
        "the subject for this aggregate would be {len} bytes long, at most {MAX_SUBJECT_LEN} are allowed; use a shorter aggregate id or tenant"
    )]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A token is not in the canonical encoding.
    #[error("`{token}` is not a valid encoded token at byte {at}")]
    InvalidToken {
        /// The token.
        token: String,
        /// Where decoding failed.
        at: usize,
    },
    /// A subject does not have the shape `<context>.events.<partition>.<tenant>.<type>.<id>`
    /// (with the partition its tokens hash to).
    #[error("`{0}` is not a stored aggregate subject of this context")]
    NotAnAggregateSubject(String),
    /// A partition count outside `1..=MAX_PARTITIONS`.
    #[error("{0} partitions: use 1 to {MAX_PARTITIONS}")]
    InvalidPartitions(u32),
    /// A stored subject whose partition token is not the one its tokens hash to with this
    /// partition count: the stream was made with another count than the reader assumes.
    #[error(
        "`{subject}` is stored in partition {found}, but with {partitions} partitions it would be in {expected}: the stream was created with another partition count; configure the store with the stream's (StoreConfig::partitions)"
    )]
    PartitionMismatch {
        /// The subject.
        subject: String,
        /// Its partition token.
        found: String,
        /// The partition this reader computes.
        expected: u32,
        /// This reader's partition count.
        partitions: u32,
    },
}

/// Checks a context or aggregate type name: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), SubjectError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SubjectError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// Encodes a user-supplied string (aggregate id, tenant) as one subject token.
pub fn encode_token(value: &str) -> String {
    if value.is_empty() {
        return EMPTY_TOKEN.to_owned();
    }
    let mut token = String::with_capacity(value.len());
    for b in value.bytes() {
        if is_plain(b) {
            token.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(token, "_{b:02X}");
        }
    }
    token
}

/// Encodes an optional tenant: `None` is [`NO_TENANT_TOKEN`], distinct from every string.
pub(crate) fn encode_tenant(tenant: Option<&str>) -> String {
    tenant.map_or_else(|| NO_TENANT_TOKEN.to_owned(), encode_token)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a token made by [`encode_token`]. Rejects every token that `encode_token` would not
/// produce (lower-case hex, escaped plain characters, stray characters, invalid UTF-8).
pub fn decode_token(token: &str) -> Result<String, SubjectError> {
    let invalid = |at: usize| SubjectError::InvalidToken {
        token: token.to_owned(),
        at,
    };
    if token == EMPTY_TOKEN {
        return Ok(String::new());
    }
    if token.is_empty() {
        return Err(invalid(0));
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_plain(b) {
            out.push(b);
            i += 1;
        } else if b == b'_' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(invalid(i));
            };
            let decoded = hi * 16 + lo;
            if is_plain(decoded) {
                return Err(invalid(i));
            }
            out.push(decoded);
            i += 3;
        } else {
            return Err(invalid(i));
        }
    }
    String::from_utf8(out).map_err(|e| invalid(e.utf8_error().valid_up_to()))
}

/// Decodes a tenant token: [`NO_TENANT_TOKEN`] is `None`.
pub fn decode_tenant(token: &str) -> Result<Option<String>, SubjectError> {
    if token == NO_TENANT_TOKEN {
        Ok(None)
    } else {
        decode_token(token).map(Some)
    }
}

/// FNV-1a (32 bit) over `tokens` concatenated, as the server's `partition` transform computes it.
fn fnv1a<'a>(tokens: impl IntoIterator<Item = &'a str>) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for token in tokens {
        for b in token.bytes() {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// The subjects of one bounded context: `<context>.events.>` and everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    context: String,
    partitions: u32,
    /// `EVENTS_<CONTEXT>`, shared with every event read ([`EventEnvelope::store`](cqrs_core::EventEnvelope::store)).
    stream: std::sync::Arc<str>,
}

impl Subjects {
    /// The subjects of context `context` (checked with [`validate_name`]) with
    /// [`DEFAULT_PARTITIONS`].
    pub fn new(context: &str) -> Result<Self, SubjectError> {
        Self::with_partitions(context, DEFAULT_PARTITIONS)
    }

    /// The subjects of context `context` on a stream of `partitions` partitions.
    pub fn with_partitions(context: &str, partitions: u32) -> Result<Self, SubjectError> {
        validate_name("context", context)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(SubjectError::InvalidPartitions(partitions));
        }
        Ok(Self {
            context: context.to_owned(),
            partitions,
            stream: crate::layout::events_stream(context).into(),
        })
    }

    /// The context's stream, `EVENTS_<CONTEXT>`: what names the store of the events read
    /// ([`EventEnvelope::store`](cqrs_core::EventEnvelope::store)).
    pub fn stream(&self) -> &std::sync::Arc<str> {
        &self.stream
    }

    /// The context name.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The stream's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// `<context>.events.>`: every event of the context.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.context)
    }

    /// `<context>.events.*.*.*`: the subjects the context's stream listens on (writers publish
    /// to these).
    pub fn stream_subject(&self) -> String {
        format!("{}.events.*.*.*", self.context)
    }

    /// The stream's subject transform destination: the published subject with the partition
    /// token inserted after `events`.
    pub fn transform_destination(&self) -> String {
        format!(
            "{}.events.{{{{partition({},1,2,3)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}",
            self.context, self.partitions
        )
    }

    /// The partition count a transform destination made by [`Self::transform_destination`]
    /// names, if it is one for this context.
    pub fn partitions_of_destination(context: &str, destination: &str) -> Option<u32> {
        let rest = destination.strip_prefix(context)?;
        let rest = rest.strip_prefix(".events.{{partition(")?;
        let (count, tail) = rest.split_once(',')?;
        (tail == "1,2,3)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}")
            .then(|| count.trim().parse().ok())
            .flatten()
    }

    /// The subjects of the context whose events stream has configuration `config` (as made by
    /// [`crate::StoreConfig::stream_config`]): the context from the subject the stream listens
    /// on, `<context>.events.*.*.*`, and the partition count from its subject transform. `None`
    /// for any other stream, including the unpartitioned `<context>.events.>` layout of earlier
    /// versions.
    pub fn from_stream_config(config: &async_nats::jetstream::stream::Config) -> Option<Self> {
        let transform = config.subject_transform.as_ref()?;
        let context = transform.source.strip_suffix(".events.*.*.*")?;
        if !config.subjects.contains(&transform.source) {
            return None;
        }
        let partitions = Self::partitions_of_destination(context, &transform.destination)?;
        Self::with_partitions(context, partitions).ok()
    }

    /// Both subjects of one aggregate instance, built in one pass: the one writers publish to
    /// ([`Self::aggregate`]) and the one the stream stores it under ([`Self::stored`]). The
    /// append path needs both for every command; building them once saves three formatted
    /// strings and two re-encodings per append.
    pub(crate) fn aggregate_and_stored(
        &self,
        tenant: Option<&str>,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<(String, String), SubjectError> {
        validate_name("aggregate type", aggregate_type)?;
        let tenant = encode_tenant(tenant);
        let id = encode_token(aggregate_id);
        let partition = self
            .partition_of_tokens(&tenant, aggregate_type, &id)
            .to_string();
        let parts = [tenant.as_str(), aggregate_type, id.as_str()];
        let tail_len = parts.iter().map(|p| p.len() + 1).sum::<usize>();
        let head = self.context.len() + ".events".len();
        let mut published = String::with_capacity(head + tail_len);
        published.push_str(&self.context);
        published.push_str(".events");
        let mut stored = String::with_capacity(head + 1 + partition.len() + tail_len);
        stored.push_str(&published);
        stored.push('.');
        stored.push_str(&partition);
        for part in parts {
            for subject in [&mut published, &mut stored] {
                subject.push('.');
                subject.push_str(part);
            }
        }
        // The same limit as `aggregate`: whatever partition the aggregate falls in.
        let stored_len = published.len() + 1 + partition_digits(self.partitions);
        if stored_len > MAX_SUBJECT_LEN {
            return Err(SubjectError::TooLong { len: stored_len });
        }
        Ok((published, stored))
    }

    /// The subject writers publish one aggregate instance's events to.
    pub fn aggregate(
        &self,
        tenant: Option<&str>,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<String, SubjectError> {
        validate_name("aggregate type", aggregate_type)?;
        let subject = format!(
            "{}.events.{}.{}.{}",
            self.context,
            encode_tenant(tenant),
            aggregate_type,
            encode_token(aggregate_id)
        );
        // The stored subject is longer by the partition token.
        let stored_len = subject.len() + 1 + partition_digits(self.partitions);
        if stored_len > MAX_SUBJECT_LEN {
            return Err(SubjectError::TooLong { len: stored_len });
        }
        Ok(subject)
    }

    /// The partition of the aggregate with these encoded tokens.
    fn partition_of_tokens(&self, tenant: &str, aggregate_type: &str, id: &str) -> u32 {
        fnv1a([tenant, aggregate_type, id]) % self.partitions
    }

    /// The subject the stream stores the events published to `published` (a subject made by
    /// [`Self::aggregate`]) under: the partition token inserted after `events`.
    pub fn stored(&self, published: &str) -> Result<String, SubjectError> {
        let not_ours = || SubjectError::NotAnAggregateSubject(published.to_owned());
        let prefix_len = self.context.len() + ".events.".len();
        let rest = published
            .strip_prefix(self.context.as_str())
            .and_then(|r| r.strip_prefix(".events."))
            .ok_or_else(not_ours)?;
        let mut tokens = rest.split('.');
        let (Some(tenant), Some(aggregate_type), Some(id), None) =
            (tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return Err(not_ours());
        };
        let partition = self.partition_of_tokens(tenant, aggregate_type, id);
        Ok(format!("{}{partition}.{rest}", &published[..prefix_len]))
    }

    /// A filter for the stored events of some partition, tenant and aggregate type; `None` is
    /// "any" (`*`).
    pub fn filter_in(
        &self,
        partition: Option<u32>,
        tenant: Option<Option<&str>>,
        aggregate_type: Option<&str>,
    ) -> Result<String, SubjectError> {
        let partition = partition.map_or_else(|| "*".to_owned(), |p| p.to_string());
        let tenant = tenant.map_or_else(|| "*".to_owned(), encode_tenant);
        let aggregate_type = match aggregate_type {
            Some(t) => {
                validate_name("aggregate type", t)?;
                t
            }
            None => "*",
        };
        Ok(format!(
            "{}.events.{partition}.{tenant}.{aggregate_type}.*",
            self.context
        ))
    }

    /// A filter for the stored events of some tenant and aggregate type; `None` is "any" (`*`).
    pub fn filter(
        &self,
        tenant: Option<Option<&str>>,
        aggregate_type: Option<&str>,
    ) -> Result<String, SubjectError> {
        self.filter_in(None, tenant, aggregate_type)
    }

    /// `<context>.guards.<tenant token>`: where a commit with read guards publishes one
    /// carrier message per guard ([`cqrs_core::AppendTo::guard`]). A carrier holds no event:
    /// it only carries the guard's `Nats-Expected-Last-Subject-Sequence` check into the atomic
    /// batch, and it expires a second after it is stored (`Nats-TTL`).
    pub fn guards(&self, tenant: Option<&str>) -> String {
        format!("{}.guards.{}", self.context, encode_tenant(tenant))
    }

    /// `<context>.guards.*`: the carrier subjects of every tenant, which the context's stream
    /// listens on beside [`Self::stream_subject`].
    pub fn guards_all(&self) -> String {
        format!("{}.guards.*", self.context)
    }

    /// `<context>.reads.<tenant token>`: where a tenant-scoped store asks the
    /// [`TenantReadService`](crate::TenantReadService) for pages of tenant `tenant`'s events.
    pub fn tenant_reads(&self, tenant: Option<&str>) -> String {
        self.tenant_reads_of_token(&encode_tenant(tenant))
    }

    /// [`Self::tenant_reads`] of an already encoded tenant token.
    pub(crate) fn tenant_reads_of_token(&self, tenant_token: &str) -> String {
        format!("{}.reads.{tenant_token}", self.context)
    }

    /// `<context>.reads.*`: what the tenant read service listens on.
    pub fn tenant_reads_all(&self) -> String {
        format!("{}.reads.*", self.context)
    }

    /// `<context>.events.<partition>.>`: the stored events of one partition.
    pub fn partition_filter(&self, partition: u32) -> String {
        format!("{}.events.{partition}.>", self.context)
    }

    /// Splits a stored aggregate subject of this context into (tenant, aggregate type, id).
    /// The partition token must be the one the other tokens hash to.
    pub fn parse(&self, subject: &str) -> Result<(Option<String>, String, String), SubjectError> {
        self.parse_with_partition(subject)
            .map(|(_, tenant, aggregate_type, id)| (tenant, aggregate_type, id))
    }

    /// [`Self::parse`], also returning the partition.
    pub fn parse_with_partition(
        &self,
        subject: &str,
    ) -> Result<(u32, Option<String>, String, String), SubjectError> {
        let not_ours = || SubjectError::NotAnAggregateSubject(subject.to_owned());
        let mut parts = subject.split('.');
        let (
            Some(context),
            Some("events"),
            Some(partition),
            Some(tenant),
            Some(aggregate_type),
            Some(id),
            None,
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(not_ours());
        };
        if context != self.context || validate_name("aggregate type", aggregate_type).is_err() {
            return Err(not_ours());
        }
        let tenant_value = decode_tenant(tenant)?;
        let id_value = decode_token(id)?;
        let expected = self.partition_of_tokens(tenant, aggregate_type, id);
        if partition != expected.to_string() {
            if partition.parse::<u32>().is_ok() {
                return Err(SubjectError::PartitionMismatch {
                    subject: subject.to_owned(),
                    found: partition.to_owned(),
                    expected,
                    partitions: self.partitions,
                });
            }
            return Err(not_ours());
        }
        Ok((expected, tenant_value, aggregate_type.to_owned(), id_value))
    }
}

/// Decimal digits of the largest partition number.
fn partition_digits(partitions: u32) -> usize {
    partitions.saturating_sub(1).max(1).ilog10() as usize + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subjects() -> Subjects {
        Subjects::new("sales").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn examples() {
        assert_eq!(encode_token("order-1"), "order-1");
        assert_eq!(encode_token("order.1"), "order_2E1");
        assert_eq!(encode_token("a b"), "a_20b");
        assert_eq!(encode_token("_"), "_5F");
        assert_eq!(encode_token("$x"), "_24x");
        assert_eq!(encode_token("*"), "_2A");
        assert_eq!(encode_token(">"), "_3E");
        assert_eq!(encode_token("été"), "_C3_A9t_C3_A9");
        assert_eq!(encode_token(""), EMPTY_TOKEN);
        assert_eq!(encode_tenant(None), NO_TENANT_TOKEN);
        assert_eq!(encode_tenant(Some("")), EMPTY_TOKEN);
        assert_eq!(
            subjects().aggregate(Some("acme"), "Order", "o.1").ok(),
            Some("sales.events.acme.Order.o_2E1".to_owned())
        );
    }

    #[test]
    fn strict_decoding() {
        for bad in [
            "", "_", "_2e", "_41", "_4", "a.b", "a*", "_ZZ", "_C3", "x y",
        ] {
            assert!(decode_token(bad).is_err(), "{bad:?} decoded");
        }
        assert_eq!(decode_tenant("_").ok(), Some(None));
        assert_eq!(decode_tenant("__").ok(), Some(Some(String::new())));
    }

    #[test]
    fn names_are_validated() {
        assert!(Subjects::new("sales.eu").is_err());
        assert!(Subjects::new("").is_err());
        assert!(Subjects::new("$sys").is_err());
        assert!(Subjects::new(&"a".repeat(65)).is_err());
        assert!(subjects().aggregate(None, "Order.Line", "1").is_err());
        assert!(subjects().aggregate(None, "*", "1").is_err());
        assert!(subjects().aggregate(None, "Ordér", "1").is_err());
        assert!(matches!(
            subjects().aggregate(None, "Order", &"é".repeat(400)),
            Err(SubjectError::TooLong { .. })
        ));
    }

    #[test]
    fn parse_inverts_stored() {
        let s = subjects();
        let published = s.aggregate(Some("t.1"), "Order", "a>b").unwrap_or_default();
        let stored = s.stored(&published).unwrap_or_default();
        assert_eq!(
            s.parse(&stored).ok(),
            Some((Some("t.1".to_owned()), "Order".to_owned(), "a>b".to_owned()))
        );
        assert!(
            s.parse(&published).is_err(),
            "a published subject is not stored"
        );
        assert!(s.parse("sales.events.0._.Order").is_err());
        assert!(s.parse("other.events.0._.Order.x").is_err());
        assert!(s.parse("sales.events.0._.Order.x.y").is_err());
        // A partition token the tokens do not hash to.
        let (partition, ..) = s.parse_with_partition(&stored).unwrap_or_default();
        let wrong = stored.replacen(
            &format!(".{partition}."),
            &format!(".{}.", (partition + 1) % s.partitions()),
            1,
        );
        assert!(s.parse(&wrong).is_err());
    }

    proptest! {
        #[test]
        fn one_pass_subjects_equal_the_two_step_ones(
            tenant in proptest::option::of(".{0,12}"),
            aggregate_type in "[A-Za-z0-9_-]{1,12}",
            id in ".{0,40}",
            partitions in 1u32..300,
        ) {
            let subjects = Subjects::with_partitions("sales", partitions).unwrap_or_else(|e| panic!("{e}"));
            let tenant = tenant.as_deref();
            let published = subjects.aggregate(tenant, &aggregate_type, &id);
            let both = subjects.aggregate_and_stored(tenant, &aggregate_type, &id);
            match (published, both) {
                (Ok(published), Ok((one, stored))) => {
                    prop_assert_eq!(&one, &published);
                    prop_assert_eq!(stored, subjects.stored(&published).unwrap_or_else(|e| panic!("{e}")));
                }
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "{a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn fnv1a_is_the_standard_hash() {
        // Reference values of FNV-1a 32.
        assert_eq!(fnv1a([""]), 0x811c_9dc5);
        assert_eq!(fnv1a(["a"]), 0xe40c_292c);
        assert_eq!(fnv1a(["foobar"]), 0xbf9c_f968);
        assert_eq!(fnv1a(["foo", "bar"]), 0xbf9c_f968);
    }

    #[test]
    fn stream_subjects_and_transform() {
        let s = Subjects::with_partitions("sales", 16).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.stream_subject(), "sales.events.*.*.*");
        assert_eq!(
            s.transform_destination(),
            "sales.events.{{partition(16,1,2,3)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}"
        );
        assert_eq!(
            Subjects::partitions_of_destination("sales", &s.transform_destination()),
            Some(16)
        );
        assert_eq!(
            Subjects::partitions_of_destination("other", &s.transform_destination()),
            None
        );
        assert_eq!(s.partition_filter(3), "sales.events.3.>");
        assert_eq!(
            s.filter(Some(Some("acme")), Some("Order")).ok(),
            Some("sales.events.*.acme.Order.*".to_owned())
        );
        assert!(Subjects::with_partitions("sales", 0).is_err());
        assert!(Subjects::with_partitions("sales", MAX_PARTITIONS + 1).is_err());
        assert_eq!(partition_digits(1), 1);
        assert_eq!(partition_digits(10), 1);
        assert_eq!(partition_digits(11), 2);
        assert_eq!(partition_digits(1024), 4);
    }

    #[test]
    fn subjects_from_the_stream_config() {
        let config = crate::StoreConfig::new("Sales")
            .partitions(16)
            .stream_config();
        assert_eq!(
            Subjects::from_stream_config(&config),
            Subjects::with_partitions("Sales", 16).ok()
        );
        let default = crate::StoreConfig::new("bank").stream_config();
        assert_eq!(
            Subjects::from_stream_config(&default).map(|s| s.partitions()),
            Some(DEFAULT_PARTITIONS)
        );
        // The unpartitioned layout of earlier versions, and streams of something else.
        let old = async_nats::jetstream::stream::Config {
            name: "EVENTS_SALES".to_owned(),
            subjects: vec!["sales.events.>".to_owned()],
            ..Default::default()
        };
        assert_eq!(Subjects::from_stream_config(&old), None);
        let mut other = config.clone();
        other.subjects = vec!["orders.>".to_owned()];
        assert_eq!(Subjects::from_stream_config(&other), None);
        let mut bad = config;
        if let Some(t) = bad.subject_transform.as_mut() {
            t.destination =
                "Sales.events.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}".to_owned();
        }
        assert_eq!(Subjects::from_stream_config(&bad), None);
    }

    proptest! {
        #[test]
        fn roundtrip(value in any::<String>()) {
            prop_assert_eq!(decode_token(&encode_token(&value)).ok(), Some(value));
        }

        #[test]
        fn tenant_roundtrip(tenant in proptest::option::of(any::<String>())) {
            let token = encode_tenant(tenant.as_deref());
            prop_assert_eq!(decode_tenant(&token).ok(), Some(tenant));
        }

        #[test]
        fn tokens_are_safe(value in any::<String>()) {
            let token = encode_token(&value);
            prop_assert!(!token.is_empty());
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert!(!token.starts_with('$'));
        }

        #[test]
        fn injective(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(encode_token(&a), encode_token(&b));
        }

        #[test]
        fn aggregate_subjects_have_five_and_six_tokens(tenant in proptest::option::of(".{0,20}"), id in ".{0,40}") {
            let subject = subjects().aggregate(tenant.as_deref(), "Order", &id);
            prop_assert!(subject.is_ok());
            let subject = subject.unwrap_or_default();
            prop_assert_eq!(subject.split('.').count(), 5);
            prop_assert!(subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"));
            let stored = subjects().stored(&subject).unwrap_or_default();
            prop_assert_eq!(stored.split('.').count(), 6);
            prop_assert_eq!(subjects().parse(&stored).ok(), Some((tenant, "Order".to_owned(), id)));
        }

        #[test]
        fn decode_then_encode_is_identity(token in "[A-Za-z0-9_-]{1,12}") {
            if let Ok(value) = decode_token(&token) {
                prop_assert_eq!(encode_token(&value), token);
            }
        }
    }
}
