//! The `tracing` layer: `tracing_subscriber::registry().with(ledger.tracing_layer())`.
//!
//! It does two jobs:
//! - records context fields of every span (request_id, trace_id, span_id, traceparent, user_id,
//!   job_id, device_id) so events published inside the span carry them;
//! - publishes tracing events at or above `[producer] tracing_level` as `system` events, with
//!   the span context, the event's fields, and `error` fields as an error with its chain.
//!
//! It never blocks and never recurses: events are queued with `try_publish` (a full queue
//! drops the log line and counts it in `ledgerline_producer_tracing_dropped_total`, because
//! waiting inside a log call can deadlock the caller), events from rdkafka and from this crate
//! are skipped, and a thread-local guard ignores anything logged while publishing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use ledgerline_schemas::event::{ErrorInfo, Event, Level};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event as TracingEvent, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::context::{self, ContextVisitor, SpanContext};
use crate::draft::error_info;
use crate::Ledger;

/// Targets never published: the Kafka client and this crate, whose logs about delivering an
/// event must not become events to deliver.
const SKIPPED_TARGETS: &[&str] = &[
    "rdkafka",
    "librdkafka",
    "ledgerline_producer",
    "schema_registry_converter",
    "reqwest",
    "hyper",
    "h2",
];

thread_local! {
    static PUBLISHING: Cell<bool> = const { Cell::new(false) };
}

/// See the module docs. Create with [`Ledger::tracing_layer`].
#[derive(Debug, Clone)]
pub struct LedgerLayer {
    ledger: Ledger,
}

impl Ledger {
    pub fn tracing_layer(&self) -> LedgerLayer {
        LedgerLayer {
            ledger: self.clone(),
        }
    }
}

fn level_of(level: &tracing::Level) -> Level {
    match *level {
        tracing::Level::TRACE => Level::Trace,
        tracing::Level::DEBUG => Level::Debug,
        tracing::Level::INFO => Level::Info,
        tracing::Level::WARN => Level::Warn,
        _ => Level::Error,
    }
}

impl<S> Layer<S> for LedgerLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = ContextVisitor::default();
        attributes.record(&mut visitor);
        let recorded = visitor.finish();
        if let Some(span) = ctx.span(id) {
            if !recorded.is_empty() {
                span.extensions_mut().insert(recorded);
            }
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut visitor = ContextVisitor::default();
        values.record(&mut visitor);
        let recorded = visitor.finish();
        if recorded.is_empty() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            match extensions.get_mut::<SpanContext>() {
                Some(existing) => {
                    // Newly recorded values win over what the span had.
                    let mut merged = recorded;
                    merged.inherit(existing);
                    *existing = merged;
                }
                None => extensions.insert(recorded),
            }
        }
    }

    fn on_event(&self, event: &TracingEvent<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() > self.ledger.inner.tracing_level {
            return;
        }
        let target = metadata.target();
        if SKIPPED_TARGETS
            .iter()
            .any(|skipped| target == *skipped || target.starts_with(&format!("{skipped}::")))
        {
            return;
        }
        if PUBLISHING.with(Cell::get) {
            return;
        }
        PUBLISHING.with(|flag| flag.set(true));

        let mut fields = FieldVisitor::default();
        event.record(&mut fields);
        let span_context = ctx
            .event_span(event)
            .map(context::from_scope)
            .unwrap_or_default();

        let level = level_of(metadata.level());
        let name = fields
            .event_name
            .take()
            .unwrap_or_else(|| format!("log.{}", level.as_str().to_ascii_lowercase()));
        let message = fields.message.take().unwrap_or_default();
        let mut draft = self.ledger.system(&name, level, target, &message).build();
        if let Event::System(system) = &mut draft {
            system.file = metadata.file().map(str::to_owned);
            system.line = metadata.line().and_then(|line| i32::try_from(line).ok());
            system.fields = fields.fields;
            system.error = fields.error;
            let envelope = &mut system.envelope;
            // The event's own span wins over whatever span is current on this thread.
            envelope.request_id = span_context.request_id.or(envelope.request_id.take());
            envelope.trace_id = span_context.trace_id.or(envelope.trace_id.take());
            envelope.span_id = span_context.span_id.or(envelope.span_id.take());
            for (key, value) in [
                ("user_id", span_context.user_id),
                ("job_id", span_context.job_id),
                ("device_id", span_context.device_id),
            ] {
                if let Some(value) = value {
                    envelope.attributes.insert(key.to_owned(), value);
                }
            }
        }
        if self.ledger.try_publish_event(draft).is_err() {
            metrics::counter!("ledgerline_producer_tracing_dropped_total").increment(1);
        }
        PUBLISHING.with(|flag| flag.set(false));
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    event_name: Option<String>,
    fields: BTreeMap<String, String>,
    error: Option<ErrorInfo>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = Some(value),
            "event_name" => self.event_name = Some(value),
            name => {
                self.fields.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.error.is_none() {
            self.error = Some(error_info(value));
        } else {
            self.put(field, value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}
