//! Context propagation: request, trace and span ids (and the user and job a span works for)
//! come from the enclosing `tracing` spans, so no call site passes them by hand.
//!
//! [`crate::LedgerLayer`] records these fields when spans are created or recorded into the span's
//! extensions; [`current`] reads them back for the current span, innermost span winning. A W3C
//! `traceparent` field (`00-<trace id>-<span id>-<flags>`) fills `trace_id` and `span_id` when
//! they are not set explicitly.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// Span fields that become event context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanContext {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub user_id: Option<String>,
    pub job_id: Option<String>,
    pub device_id: Option<String>,
}

impl SpanContext {
    /// Fills what `self` lacks from `outer`: inner spans win.
    pub fn inherit(&mut self, outer: &SpanContext) {
        for (mine, theirs) in [
            (&mut self.request_id, &outer.request_id),
            (&mut self.trace_id, &outer.trace_id),
            (&mut self.span_id, &outer.span_id),
            (&mut self.user_id, &outer.user_id),
            (&mut self.job_id, &outer.job_id),
            (&mut self.device_id, &outer.device_id),
        ] {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == SpanContext::default()
    }
}

/// Parses a W3C `traceparent` into (trace id, parent span id).
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    // All-zero ids are invalid per the spec.
    if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace_id.to_ascii_lowercase(), span_id.to_ascii_lowercase()))
}

/// Collects the context fields of one span's attributes or record.
#[derive(Default)]
pub(crate) struct ContextVisitor {
    pub context: SpanContext,
    traceparent: Option<String>,
}

impl ContextVisitor {
    pub fn finish(mut self) -> SpanContext {
        if let Some((trace_id, span_id)) = self.traceparent.as_deref().and_then(parse_traceparent) {
            self.context.trace_id.get_or_insert(trace_id);
            self.context.span_id.get_or_insert(span_id);
        }
        self.context
    }

    fn set(&mut self, field: &Field, value: String) {
        let slot = match field.name() {
            "request_id" => &mut self.context.request_id,
            "trace_id" => &mut self.context.trace_id,
            "span_id" => &mut self.context.span_id,
            "user_id" => &mut self.context.user_id,
            "job_id" => &mut self.context.job_id,
            "device_id" => &mut self.context.device_id,
            "traceparent" => &mut self.traceparent,
            _ => return,
        };
        *slot = Some(value);
    }
}

impl Visit for ContextVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here already formatted with Display.
        self.set(field, format!("{value:?}"));
    }
}

/// Merges the context of `span` and all its parents, innermost first.
pub(crate) fn from_scope<'a, R: LookupSpan<'a>>(span: SpanRef<'a, R>) -> SpanContext {
    let mut merged = SpanContext::default();
    for ancestor in span.scope() {
        if let Some(context) = ancestor.extensions().get::<SpanContext>() {
            merged.inherit(context);
        }
    }
    merged
}

/// The context of the current span. Empty unless the subscriber is a `tracing_subscriber`
/// registry with [`crate::LedgerLayer`] installed.
pub fn current() -> SpanContext {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            Some(from_scope(span))
        })
        .flatten()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        assert_eq!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned()
            ))
        );
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(parse_traceparent("garbage"), None);
        assert_eq!(parse_traceparent("00-4bf92f35-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn inner_spans_win() {
        let mut inner = SpanContext {
            request_id: Some("inner".to_owned()),
            ..SpanContext::default()
        };
        let outer = SpanContext {
            request_id: Some("outer".to_owned()),
            job_id: Some("job-1".to_owned()),
            ..SpanContext::default()
        };
        inner.inherit(&outer);
        assert_eq!(inner.request_id.as_deref(), Some("inner"));
        assert_eq!(inner.job_id.as_deref(), Some("job-1"));
    }
}
