//! Trace context: where a piece of work comes from, so one order can be followed from
//! its `POST /orders` through every event and service it touches.
//!
//! It travels as two Kafka headers (and HTTP headers of the same names):
//! - `traceparent`, the W3C Trace Context header (`00-<trace id>-<parent id>-<flags>`):
//!   one trace id for the whole flow, a new span id at each hop;
//! - `x-request-id`: the id of the HTTP request that started the flow, as the client
//!   gave it or as the service made it up.

use uuid::Uuid;

pub const TRACEPARENT: &str = "traceparent";
pub const REQUEST_ID: &str = "x-request-id";

/// Longest `X-Request-Id` taken from a client; a longer one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// The trace context of one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, the same for the whole flow.
    pub trace_id: String,
    /// 16 lowercase hex digits, this hop's own.
    pub span_id: String,
    /// The hop this one continues (the span id of the `traceparent` it came with), if any.
    pub parent_span_id: Option<String>,
    /// The W3C flags (`01` sampled).
    pub flags: String,
    /// The request that started the flow.
    pub request_id: String,
}

impl TraceContext {
    /// A new flow: a fresh trace, and `request_id` or a fresh one.
    pub fn start(request_id: Option<&str>) -> Self {
        Self {
            trace_id: random_hex(32),
            span_id: random_hex(16),
            parent_span_id: None,
            flags: "01".into(),
            request_id: request_id
                .and_then(valid_request_id)
                .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned),
        }
    }

    /// The context of an incoming HTTP request: a child of its `traceparent` when that
    /// is valid, else a new trace; its `X-Request-Id` when that is acceptable, else a
    /// new one.
    pub fn from_request(traceparent: Option<&str>, request_id: Option<&str>) -> Self {
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id: random_hex(16),
                parent_span_id: Some(parent),
                flags,
                request_id: request_id
                    .and_then(valid_request_id)
                    .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned),
            },
            None => Self::start(request_id),
        }
    }

    /// The context carried by an event's headers, continued as a new hop; `None` when
    /// the event carries no valid `traceparent` (it came from elsewhere).
    pub fn from_headers(traceparent: Option<&str>, request_id: Option<&str>) -> Option<Self> {
        let (trace_id, parent, flags) = traceparent.and_then(parse_traceparent)?;
        Some(Self {
            trace_id,
            span_id: random_hex(16),
            parent_span_id: Some(parent),
            flags,
            request_id: request_id
                .and_then(valid_request_id)
                .unwrap_or("-")
                .to_owned(),
        })
    }

    /// The next hop of this flow: the same trace and request, a span of its own whose
    /// parent is this one.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(16),
            parent_span_id: Some(self.span_id.clone()),
            flags: self.flags.clone(),
            request_id: self.request_id.clone(),
        }
    }

    /// Whether the flow is sampled (W3C flag `01`): only sampled hops are exported.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.flags, 16).is_ok_and(|f| f & 1 == 1)
    }

    /// The `traceparent` value naming this hop as the parent of the next.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    /// The headers to send on: `traceparent` and `x-request-id`.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (TRACEPARENT, self.traceparent()),
            (REQUEST_ID, self.request_id.clone()),
        ]
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero → (trace id, parent id, flags).
fn parse_traceparent(value: &str) -> Option<(String, String, String)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let ok = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    ok.then(|| (trace_id.to_owned(), parent_id.to_owned(), flags.to_owned()))
}

/// 1 to [`MAX_REQUEST_ID`] visible ASCII characters.
fn valid_request_id(id: &str) -> Option<&str> {
    let id = id.trim();
    (!id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(id)
}

fn random_hex(digits: usize) -> String {
    let mut out = String::with_capacity(digits);
    while out.len() < digits {
        out.push_str(&Uuid::new_v4().simple().to_string());
    }
    out.truncate(digits);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let context = TraceContext::from_request(Some(PARENT), Some("req-1"));
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(context.span_id, "00f067aa0ba902b7");
        assert_eq!(context.request_id, "req-1");
        let next = context.traceparent();
        assert!(next.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(next.ends_with("-01"));
        assert_eq!(next.len(), PARENT.len());
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let context = TraceContext::from_request(Some(bad), None);
            assert_ne!(
                context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert_eq!(context.trace_id.len(), 32);
            assert!(
                TraceContext::from_headers(Some(bad), None).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_unusable_request_id_is_replaced() {
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for bad in ["", "  ", "has space", long.as_str()] {
            let context = TraceContext::start(Some(bad));
            assert_ne!(context.request_id, bad);
            assert!(Uuid::parse_str(&context.request_id).is_ok());
        }
        assert_eq!(TraceContext::start(Some(" abc ")).request_id, "abc");
    }
}
