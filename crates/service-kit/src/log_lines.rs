//! JSON log lines with the trace where log pipelines look for it: `trace_id` and `span_id`
//! as top-level fields, taken from the line's own fields or, failing that, from the
//! innermost span that carries them (the HTTP request's, …).

use std::fmt;

use serde_json::{Map, Value};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps the JSON event format (with its span list) and lifts the trace fields.
pub struct TopLevelTrace<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for TopLevelTrace<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match serde_json::from_str::<Map<String, Value>>(line.trim_end()) {
            Ok(mut fields) => {
                lift_trace(&mut fields);
                writeln!(writer, "{}", Value::Object(fields))
            }
            Err(_) => writer.write_str(&line),
        }
    }
}

/// Sets `trace_id` and `span_id` at the top level from the innermost span having them,
/// unless the line has its own.
fn lift_trace(fields: &mut Map<String, Value>) {
    let Some(Value::Array(spans)) = fields.get("spans") else {
        return;
    };
    let mut found = Vec::new();
    for name in ["trace_id", "span_id"] {
        if fields.contains_key(name) {
            continue;
        }
        let value = spans
            .iter()
            .rev()
            .find_map(|span| span.get(name).filter(|v| v.as_str() != Some("-")));
        if let Some(value) = value {
            found.push((name, value.clone()));
        }
    }
    for (name, value) in found {
        fields.insert(name.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_spans_trace_is_lifted_unless_the_line_has_its_own() {
        let mut line: Map<String, Value> = serde_json::from_str(
            r#"{"message":"m","spans":[{"name":"outer","trace_id":"t1","span_id":"s1"},
                {"name":"http","trace_id":"t2","span_id":"s2"}]}"#,
        )
        .unwrap();
        lift_trace(&mut line);
        assert_eq!(line["trace_id"], "t2");
        assert_eq!(line["span_id"], "s2");

        let mut own: Map<String, Value> = serde_json::from_str(
            r#"{"trace_id":"mine","spans":[{"name":"http","trace_id":"t2","span_id":"s2"}]}"#,
        )
        .unwrap();
        lift_trace(&mut own);
        assert_eq!(own["trace_id"], "mine");
        assert_eq!(own["span_id"], "s2");
    }
}
