//! What a handler sees and answers: the [`Message`]s of a batch, and per message an
//! [`Outcome`] (or, for the whole batch, a [`BatchError`]).

use std::ops::Deref;

use events::TraceContext;
use kafka::Record;

/// A consumed record, with what the runner has already read from its headers: the trace
/// context it continues and its correlation id. Dereferences to the [`Record`].
#[derive(Debug, Clone)]
pub struct Message {
    pub record: Record,
    /// The trace context the record carries (`traceparent`, `x-request-id`), continued as
    /// this service's hop; `None` when it carries none.
    pub trace: Option<TraceContext>,
    /// The `correlation-id` header, if any.
    pub correlation_id: Option<String>,
}

impl Message {
    /// Reads the record's trace context and correlation id, once.
    pub fn new(record: Record) -> Self {
        let trace = TraceContext::from_headers(
            record
                .last_header_text(events::trace::TRACEPARENT)
                .as_deref(),
            record
                .last_header_text(events::trace::REQUEST_ID)
                .as_deref(),
        );
        let correlation_id = record.last_header_text(events::headers::CORRELATION_ID);
        Self {
            record,
            trace,
            correlation_id,
        }
    }

    /// The trace id, or `-`, for log lines.
    pub fn trace_id(&self) -> &str {
        self.trace.as_ref().map_or("-", |t| t.trace_id.as_str())
    }

    /// This service's span id of the message's trace, or `-`, for log lines.
    pub fn span_id(&self) -> &str {
        self.trace.as_ref().map_or("-", |t| t.span_id.as_str())
    }

    /// The correlation id, or `-`, for log lines.
    pub fn correlation(&self) -> &str {
        self.correlation_id.as_deref().unwrap_or("-")
    }
}

impl From<Record> for Message {
    fn from(record: Record) -> Self {
        Self::new(record)
    }
}

impl Deref for Message {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.record
    }
}

/// Why a message failed: a stable class for grouping (`poison.invalid`,
/// `gateway.unavailable`, …; all of them in [`crate::class`]) and a message for people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    pub class: String,
    pub message: String,
}

impl Failure {
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class: class.into(),
            message: message.into(),
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// Applied before (a redelivery or a replay): recognised, and nothing done again.
    Duplicate,
    /// Can never be processed (poison): dead-lettered at once.
    DeadLetter(Failure),
    /// Failed for a reason of its own that may pass (the gateway fails this order while it
    /// answers others): tried again, up to [`crate::RetryPolicy::max_attempts`] attempts,
    /// then dead-lettered.
    Retry(Failure),
    /// Not applied, through no fault of its own: what it depends on is down (the payment
    /// gateway's breaker is open) or busy with it (a request of the same key in flight).
    /// Tried again after a pause, without limit; it uses up no attempt and is never
    /// dead-lettered.
    Wait(Failure),
}

/// Why a handler could not apply a batch at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not *now*: its database or broker is unreachable. The runner tries the same
    /// messages again, without limit.
    #[error("outage: {0}")]
    Outage(String),
    /// Never as a whole: a message of the batch holds something refused however often it
    /// is asked (a value the database will not store). The runner splits the batch until
    /// each such message is alone, dead-letters it with this failure, and applies the rest.
    #[error("refused: {}: {}", .0.class, .0.message)]
    Refused(Failure),
}

/// What to do with messages. Must be idempotent: a batch may be delivered again.
pub trait BatchHandler: Send + Sync + 'static {
    /// Applies `batch` (in offset order per partition; a retry round gets only the
    /// messages to retry) and returns one outcome per message, in the same order.
    fn handle(
        &self,
        batch: &[Message],
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>, BatchError>> + Send;
}
