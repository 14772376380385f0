//! Parsing a submitted Avro schema and deciding when two submissions are "the same schema".
//!
//! Identity is the schema as apache-avro understands it, written back out as JSON with sorted
//! keys: insensitive to whitespace, to the order of a JSON object's keys and to equivalent
//! spellings (`{"type":"string"}` and `"string"`, `"name":"a.b.C"` and `"namespace":"a.b"`),
//! but sensitive to record field order and to everything else that is in the schema, including
//! `default`, `doc`, `aliases` and `logicalType`. That is what Confluent does (it compares
//! Java Avro's `Schema.toString()`); Avro's Parsing Canonical Form would be wrong here,
//! because it strips defaults and logical types: adding a default to a field, which is how a
//! schema is made evolvable, would hand back the old id and silently drop the change.

use apache_avro::Schema;
use serde_json::Value;

/// A parsed Avro schema and its identity (see the module docs).
#[derive(Debug, Clone)]
pub struct AvroSchema {
    pub schema: Schema,
    pub identity: String,
}

impl AvroSchema {
    /// Parses `text`; the error is apache-avro's message, for the client.
    pub fn parse(text: &str) -> Result<Self, String> {
        let schema = Schema::parse_str(text).map_err(|error| error.to_string())?;
        let written = serde_json::to_value(&schema)
            .map_err(|error| format!("schema cannot be written back as json: {error}"))?;
        Ok(Self {
            schema,
            identity: sorted(written).to_string(),
        })
    }
}

/// `value` with every object's keys in sorted order. serde_json sorts already unless some crate
/// in the build turns on its `preserve_order` feature; then defaults and custom attributes would
/// keep the client's key order and identical schemas could get two ids.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, sorted(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(text: &str) -> String {
        AvroSchema::parse(text).unwrap().identity
    }

    #[test]
    fn whitespace_key_order_and_equivalent_spellings_do_not_matter() {
        let compact = r#"{"type":"record","name":"E","namespace":"a.b","fields":[{"name":"x","type":"int"}]}"#;
        let spaced = r#"
            { "fields" : [ { "type" : {"type": "int"}, "name" : "x" } ],
              "name" : "a.b.E", "type" : "record" }"#;
        assert_eq!(identity(compact), identity(spaced));
        assert_eq!(identity(r#""string""#), identity(r#"{"type":"string"}"#));
    }

    #[test]
    fn field_order_defaults_docs_and_logical_types_do_matter() {
        let base = r#"{"type":"record","name":"E","fields":[{"name":"x","type":"int"},{"name":"y","type":"long"}]}"#;
        let variants = [
            r#"{"type":"record","name":"E","fields":[{"name":"y","type":"long"},{"name":"x","type":"int"}]}"#,
            r#"{"type":"record","name":"E","fields":[{"name":"x","type":"int","default":0},{"name":"y","type":"long"}]}"#,
            r#"{"type":"record","name":"E","doc":"d","fields":[{"name":"x","type":"int"},{"name":"y","type":"long"}]}"#,
            r#"{"type":"record","name":"E","fields":[{"name":"x","type":"int"},{"name":"y","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#,
        ];
        for variant in variants {
            assert_ne!(identity(base), identity(variant), "{variant}");
        }
    }

    #[test]
    fn invalid_schemas_are_errors_not_panics() {
        for text in [
            "",
            "{",
            "42",
            "{}",
            r#""nosuchtype""#,
            r#"{"type":"record","name":"E"}"#,
            r#"{"type":"record","name":"E","fields":[{"name":"x","type":"Missing"}]}"#,
            r#"{"type":"enum","name":"E","symbols":["A","A"]}"#,
            r#"{"type":"fixed","name":"F","size":-1}"#,
            r#"{"type":"record","name":"E","fields":[{"name":"x","type":"int","default":"no"}]}"#,
        ] {
            assert!(AvroSchema::parse(text).is_err(), "{text:?} parsed");
        }
    }
}
