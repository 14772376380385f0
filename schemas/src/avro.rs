//! The checked-in Avro schemas (`schemas/avro/<category>.v<N>.avsc`), compiled into the crate.
//! Files are never edited once released: a change is a new version file, and the registry's
//! compatibility check decides whether it may ship.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;

use crate::Category;

/// One released version of a category's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaFile {
    pub category: Category,
    pub version: u32,
    /// The `.avsc` text, as registered.
    pub text: &'static str,
}

/// Every released schema version, oldest first within a category.
pub const SCHEMA_FILES: &[SchemaFile] = &[
    SchemaFile {
        category: Category::Audit,
        version: 1,
        text: include_str!("../avro/audit.v1.avsc"),
    },
    SchemaFile {
        category: Category::Job,
        version: 1,
        text: include_str!("../avro/job.v1.avsc"),
    },
    SchemaFile {
        category: Category::Job,
        version: 2,
        text: include_str!("../avro/job.v2.avsc"),
    },
    SchemaFile {
        category: Category::Connection,
        version: 1,
        text: include_str!("../avro/connection.v1.avsc"),
    },
    SchemaFile {
        category: Category::System,
        version: 1,
        text: include_str!("../avro/system.v1.avsc"),
    },
    SchemaFile {
        category: Category::Session,
        version: 1,
        text: include_str!("../avro/session.v1.avsc"),
    },
];

/// The version this build writes (and reads into) for `category`: its newest file.
pub fn current(category: Category) -> SchemaFile {
    SCHEMA_FILES
        .iter()
        .filter(|file| file.category == category)
        .max_by_key(|file| file.version)
        .copied()
        // Every category has at least one file; `all_categories_have_a_schema` guards this.
        .unwrap_or(SchemaFile {
            category,
            version: 0,
            text: "",
        })
}

static PARSED: LazyLock<HashMap<Category, Result<Schema, String>>> = LazyLock::new(|| {
    Category::ALL
        .into_iter()
        .map(|category| {
            let parsed =
                Schema::parse_str(current(category).text).map_err(|error| error.to_string());
            (category, parsed)
        })
        .collect()
});

/// The parsed current schema of `category`, the reader schema decoded events resolve to.
pub fn reader_schema(category: Category) -> Result<&'static Schema, String> {
    match PARSED.get(&category) {
        Some(Ok(schema)) => Ok(schema),
        Some(Err(error)) => Err(format!("schema for {category} does not parse: {error}")),
        None => Err(format!("no schema for {category}")),
    }
}

#[cfg(test)]
// The one-shot datum helpers are all these tests need; their replacements are builders.
#[allow(deprecated)]
mod tests {
    use std::collections::BTreeSet;

    use apache_avro::{from_avro_datum, to_avro_datum};

    use super::*;
    use crate::codec::from_writer_value;
    use crate::event::{Event, JobEvent};
    use crate::samples;

    fn inner_value(event: &Event) -> apache_avro::types::Value {
        match event {
            Event::Audit(inner) => apache_avro::to_value(inner),
            Event::Job(inner) => apache_avro::to_value(inner),
            Event::Connection(inner) => apache_avro::to_value(inner),
            Event::System(inner) => apache_avro::to_value(inner),
            Event::Session(inner) => apache_avro::to_value(inner),
        }
        .unwrap()
    }

    fn json_of(event: &Event) -> serde_json::Value {
        match event {
            Event::Audit(inner) => serde_json::to_value(inner),
            Event::Job(inner) => serde_json::to_value(inner),
            Event::Connection(inner) => serde_json::to_value(inner),
            Event::System(inner) => serde_json::to_value(inner),
            Event::Session(inner) => serde_json::to_value(inner),
        }
        .unwrap()
    }

    /// Dotted paths of every record field in an `.avsc` (JSON) schema.
    fn schema_paths(schema: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
        let Some(fields) = schema.get("fields").and_then(|f| f.as_array()) else {
            return;
        };
        for field in fields {
            let name = field["name"].as_str().unwrap();
            let path = format!("{prefix}{name}");
            out.insert(path.clone());
            let types: Vec<&serde_json::Value> = match &field["type"] {
                serde_json::Value::Array(variants) => variants.iter().collect(),
                other => vec![other],
            };
            for variant in types {
                if variant.get("type").and_then(|t| t.as_str()) == Some("record") {
                    schema_paths(variant, &format!("{path}."), out);
                }
            }
        }
    }

    /// Dotted paths of every struct field in a sample (maps are leaves).
    fn value_paths(
        value: &serde_json::Value,
        prefix: &str,
        out: &mut BTreeSet<String>,
        leaves: &[&str],
    ) {
        if let serde_json::Value::Object(map) = value {
            for (key, inner) in map {
                let path = format!("{prefix}{key}");
                out.insert(path.clone());
                if !leaves.contains(&key.as_str()) {
                    value_paths(inner, &format!("{path}."), out, leaves);
                }
            }
        }
    }

    #[test]
    fn all_categories_have_a_schema_that_parses() {
        for category in Category::ALL {
            assert!(current(category).version >= 1, "{category}");
            reader_schema(category).unwrap();
        }
        for file in SCHEMA_FILES {
            Schema::parse_str(file.text).unwrap();
        }
    }

    #[test]
    fn types_match_the_avsc_files() {
        for category in Category::ALL {
            let event = samples::event(category, 7);
            let schema_json: serde_json::Value =
                serde_json::from_str(current(category).text).unwrap();
            let mut in_schema = BTreeSet::new();
            schema_paths(&schema_json, "", &mut in_schema);
            let mut in_type = BTreeSet::new();
            value_paths(
                &json_of(&event),
                "",
                &mut in_type,
                &["attributes", "fields"],
            );
            assert_eq!(
                in_type, in_schema,
                "{category}: Rust type and .avsc disagree"
            );
        }
    }

    #[test]
    fn every_category_round_trips_through_its_avsc() {
        for category in Category::ALL {
            let schema = reader_schema(category).unwrap();
            let event = samples::event(category, 3);
            let value = inner_value(&event).resolve(schema).unwrap();
            let bytes = to_avro_datum(schema, value).unwrap();
            let read = from_avro_datum(schema, &mut bytes.as_slice(), None).unwrap();
            let decoded = from_writer_value(category, 1, read).unwrap();
            assert_eq!(decoded, event, "{category}");
        }
    }

    fn job_file(version: u32) -> Schema {
        let file = SCHEMA_FILES
            .iter()
            .find(|f| f.category == Category::Job && f.version == version)
            .unwrap();
        Schema::parse_str(file.text).unwrap()
    }

    #[test]
    fn job_v1_and_v2_read_each_other() {
        let (v1, v2) = (job_file(1), job_file(2));
        let event = samples::job(5);

        // v1 writer, v2 reader: the added field takes its default.
        let mut v1_value = apache_avro::to_value(&event).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut v1_value {
            fields.retain(|(name, _)| name != "parent_job_id");
        }
        let v1_bytes = to_avro_datum(&v1, v1_value.resolve(&v1).unwrap()).unwrap();
        let written = from_avro_datum(&v1, &mut v1_bytes.as_slice(), None).unwrap();
        let Event::Job(read) = from_writer_value(Category::Job, 1, written).unwrap() else {
            panic!("not a job");
        };
        assert_eq!(read.parent_job_id, None);
        assert_eq!(read.job_id, event.job_id);

        // v2 writer, v1 reader: the new field is skipped.
        let v2_bytes = to_avro_datum(
            &v2,
            apache_avro::to_value(&event).unwrap().resolve(&v2).unwrap(),
        )
        .unwrap();
        let read_as_v1 = from_avro_datum(&v2, &mut v2_bytes.as_slice(), Some(&v1)).unwrap();
        let apache_avro::types::Value::Record(fields) = &read_as_v1 else {
            panic!("not a record");
        };
        assert!(fields.iter().all(|(name, _)| name != "parent_job_id"));
        assert!(fields.iter().any(|(name, _)| name == "job_id"));

        // And the registry's rule agrees: each can read the other.
        apache_avro::schema_compatibility::SchemaCompatibility::mutual_read(&v1, &v2).unwrap();
        let _: JobEvent = event;
    }
}
