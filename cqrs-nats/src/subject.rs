//! Subjects of aggregate streams and the token codec that keeps user data out of the subject
//! syntax.
//!
//! Every aggregate instance has its own subject:
//!
//! ```text
//! <context>.events.<tenant>.<AggregateType>.<id>
//! ```
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
    /// A subject does not have the shape `<context>.events.<tenant>.<type>.<id>`.
    #[error("`{0}` is not an aggregate stream subject")]
    NotAnAggregateSubject(String),
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
pub fn encode_tenant(tenant: Option<&str>) -> String {
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

/// The subjects of one bounded context: `<context>.events.>` and everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    context: String,
}

impl Subjects {
    /// The subjects of context `context` (checked with [`validate_name`]).
    pub fn new(context: &str) -> Result<Self, SubjectError> {
        validate_name("context", context)?;
        Ok(Self {
            context: context.to_owned(),
        })
    }

    /// The context name.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// `<context>.events.>`: every event of the context.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.context)
    }

    /// The subject of one aggregate instance.
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
        if subject.len() > MAX_SUBJECT_LEN {
            return Err(SubjectError::TooLong { len: subject.len() });
        }
        Ok(subject)
    }

    /// A filter for the events of some tenant and aggregate type; `None` is "any" (`*`).
    pub fn filter(
        &self,
        tenant: Option<Option<&str>>,
        aggregate_type: Option<&str>,
    ) -> Result<String, SubjectError> {
        let tenant = tenant.map_or_else(|| "*".to_owned(), encode_tenant);
        let aggregate_type = match aggregate_type {
            Some(t) => {
                validate_name("aggregate type", t)?;
                t
            }
            None => "*",
        };
        Ok(format!(
            "{}.events.{tenant}.{aggregate_type}.*",
            self.context
        ))
    }

    /// Splits an aggregate subject of this context into (tenant, aggregate type, id).
    pub fn parse(&self, subject: &str) -> Result<(Option<String>, String, String), SubjectError> {
        let not_ours = || SubjectError::NotAnAggregateSubject(subject.to_owned());
        let mut parts = subject.split('.');
        let (Some(context), Some("events"), Some(tenant), Some(aggregate_type), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(not_ours());
        };
        if context != self.context || validate_name("aggregate type", aggregate_type).is_err() {
            return Err(not_ours());
        }
        Ok((
            decode_tenant(tenant)?,
            aggregate_type.to_owned(),
            decode_token(id)?,
        ))
    }
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
    fn parse_inverts_aggregate() {
        let s = subjects();
        let subject = s.aggregate(Some("t.1"), "Order", "a>b").unwrap_or_default();
        assert_eq!(
            s.parse(&subject).ok(),
            Some((Some("t.1".to_owned()), "Order".to_owned(), "a>b".to_owned()))
        );
        assert!(s.parse("sales.events._.Order").is_err());
        assert!(s.parse("other.events._.Order.x").is_err());
        assert!(s.parse("sales.events._.Order.x.y").is_err());
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
        fn aggregate_subject_has_five_tokens(tenant in proptest::option::of(".{0,20}"), id in ".{0,40}") {
            let subject = subjects().aggregate(tenant.as_deref(), "Order", &id);
            prop_assert!(subject.is_ok());
            let subject = subject.unwrap_or_default();
            prop_assert_eq!(subject.split('.').count(), 5);
            prop_assert!(subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"));
            prop_assert_eq!(subjects().parse(&subject).ok(), Some((tenant, "Order".to_owned(), id)));
        }

        #[test]
        fn decode_then_encode_is_identity(token in "[A-Za-z0-9_-]{1,12}") {
            if let Ok(value) = decode_token(&token) {
                prop_assert_eq!(encode_token(&value), token);
            }
        }
    }
}
