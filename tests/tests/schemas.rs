//! Event schemas through the registry: every category round-trips in the Confluent wire format,
//! job v1 and v2 read each other, an incompatible v3 is refused, start-up registration and
//! checks report incompatibilities by subject, and bad bytes get the right dead-letter reason.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use apache_avro::types::Value;
use ledgerline_schemas::avro::{self, SCHEMA_FILES};
use ledgerline_schemas::event::Event;
use ledgerline_schemas::{samples, Category, CodecError, EventCodec};
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::{Harness, RegistryServer};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

fn codec(url: &str) -> EventCodec {
    EventCodec::new(&SchemaRegistryConfig {
        url: url.to_owned(),
        ..SchemaRegistryConfig::default()
    })
    .unwrap()
}

fn job_schema(version: u32) -> &'static str {
    SCHEMA_FILES
        .iter()
        .find(|file| file.category == Category::Job && file.version == version)
        .unwrap()
        .text
}

async fn post(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn every_category_round_trips_through_the_registry() {
    let harness = Harness::shared().unwrap();
    let codec = codec(&harness.registry.url());
    let plain_decoder = AvroDecoder::new(SrSettings::new(harness.registry.url()));
    for category in Category::ALL {
        let event = samples::event(category, 11);
        let bytes = codec.encode(&event).await.unwrap();
        assert_eq!(bytes[0], 0, "magic byte");
        assert_eq!(
            codec.decode(category, &bytes).await.unwrap(),
            event,
            "{category}"
        );

        // The converter alone (no Ledgerline code) reads the same record.
        let decoded = plain_decoder.decode(Some(&bytes)).await.unwrap();
        assert_eq!(
            decoded.name.map(|name| name.name().to_owned()),
            Some(format!("{}Event", capitalised(category.as_str())))
        );
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let prepared = codec.prepare(category, false).await.unwrap();
        assert_eq!(
            prepared, id,
            "{category}: registered id differs from the one on the wire"
        );
    }
}

#[tokio::test]
async fn direct_encoding_matches_the_converter() {
    // EventCodec writes the datum with apache-avro's schema-aware serializer for speed; the
    // bytes must be exactly what the converter's own encode_struct produces.
    let harness = Harness::shared().unwrap();
    let codec = codec(&harness.registry.url());
    let converter = AvroEncoder::new(SrSettings::new(harness.registry.url()));
    for category in Category::ALL {
        let event = samples::event(category, 5);
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            category.topic_name().to_owned(),
            false,
            SuppliedSchema::new(
                None,
                SchemaType::Avro,
                avro::current(category).text.to_owned(),
            ),
        );
        let theirs = match &event {
            Event::Audit(inner) => converter.encode_struct(inner, &strategy).await,
            Event::Job(inner) => converter.encode_struct(inner, &strategy).await,
            Event::Connection(inner) => converter.encode_struct(inner, &strategy).await,
            Event::System(inner) => converter.encode_struct(inner, &strategy).await,
            Event::Session(inner) => converter.encode_struct(inner, &strategy).await,
        }
        .unwrap();
        assert_eq!(codec.encode(&event).await.unwrap(), theirs, "{category}");
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

#[tokio::test]
async fn job_schema_evolves_backward_and_forward_and_refuses_v3() {
    let harness = Harness::shared().unwrap();
    // Its own registry: this test registers versions the shared subjects must not see.
    let registry = RegistryServer::start(&harness.broker.bootstrap()).unwrap();
    let url = registry.url();
    let subject = Category::Job.subject();
    let settings = SrSettings::new(url.clone());

    // A v1 writer (an older service) registers v1 and writes a v1 record.
    let v1_writer = AvroEncoder::new(settings.clone());
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        Category::Job.topic_name().to_owned(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, job_schema(1).to_owned()),
    );
    let mut v1_value = apache_avro::to_value(samples::job(1)).unwrap();
    if let Value::Record(fields) = &mut v1_value {
        fields.retain(|(name, _)| name != "parent_job_id");
    }
    let v1_bytes = v1_writer.encode_value(v1_value, &strategy).await.unwrap();

    // This build (v2) registers v2 — compatible under the default BACKWARD — and reads v1 data.
    let codec = codec(&url);
    let v2_id = codec.prepare(Category::Job, true).await.unwrap();
    let v1_id = u32::from_be_bytes([v1_bytes[1], v1_bytes[2], v1_bytes[3], v1_bytes[4]]);
    assert_ne!(v1_id, v2_id);
    let Event::Job(read) = codec.decode(Category::Job, &v1_bytes).await.unwrap() else {
        panic!("not a job");
    };
    assert_eq!(read.parent_job_id, None, "v2 reader fills the default");
    assert_eq!(read.job_id, samples::job(1).job_id);

    // A v1 reader reads v2 data: resolve the writer's value to the v1 schema.
    let v2_bytes = codec.encode(&Event::Job(samples::job(2))).await.unwrap();
    let written = AvroDecoder::new(settings.clone())
        .decode(Some(&v2_bytes))
        .await
        .unwrap();
    let v1_schema = apache_avro::Schema::parse_str(job_schema(1)).unwrap();
    let Value::Record(as_v1) = written.value.resolve(&v1_schema).unwrap() else {
        panic!("not a record");
    };
    assert!(as_v1.iter().all(|(name, _)| name != "parent_job_id"));
    assert!(as_v1
        .iter()
        .any(|(name, value)| name == "job_id" && *value == Value::String(samples::job(2).job_id)));

    // v3 adds a field without a default: v3 readers could not read v1/v2 data. Refused.
    let mut v3: serde_json::Value = serde_json::from_str(job_schema(2)).unwrap();
    v3["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": "string"}));
    let (status, body) = post(
        &format!("{url}/subjects/{subject}/versions"),
        serde_json::json!({"schema": v3.to_string()}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error_code"], 409);
    assert!(
        body["message"].as_str().unwrap().contains("tenant"),
        "{body}"
    );

    // Both versions stay readable by id, and nothing was registered for v3.
    let (status, versions) = (
        200,
        reqwest::get(format!("{url}/subjects/{subject}/versions"))
            .await
            .unwrap()
            .json::<Vec<u32>>()
            .await
            .unwrap(),
    );
    assert_eq!((status, versions), (200, vec![1, 2]));
}

#[tokio::test]
async fn start_up_names_the_subject_of_an_incompatible_or_missing_schema() {
    let harness = Harness::shared().unwrap();
    let registry = RegistryServer::start(&harness.broker.bootstrap()).unwrap();
    let url = registry.url();
    let subject = Category::Job.subject();

    // With auto-registration off, a schema nobody registered stops start-up.
    let error = codec(&url).prepare(Category::Job, false).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&subject) && text.contains("auto_register is off"),
        "{text}"
    );

    // Someone registered a job schema whose job_id is a long: this build's v2 (a string) cannot
    // read that data, so BACKWARD refuses it and start-up stops naming subject and field.
    let mut conflicting: serde_json::Value = serde_json::from_str(job_schema(1)).unwrap();
    for field in conflicting["fields"].as_array_mut().unwrap() {
        if field["name"] == "job_id" {
            field["type"] = serde_json::json!("long");
        }
    }
    let (status, body) = post(
        &format!("{url}/subjects/{subject}/versions"),
        serde_json::json!({"schema": conflicting.to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let error = codec(&url).prepare(Category::Job, true).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, CodecError::Registration { .. }), "{text}");
    assert!(text.contains(&subject), "{text}");
    assert!(
        text.contains("409") || text.contains("incompatible"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_bytes_get_their_dead_letter_reason() {
    let harness = Harness::shared().unwrap();
    let codec = codec(&harness.registry.url());
    let good = codec
        .encode(&samples::event(Category::Audit, 1))
        .await
        .unwrap();

    let mut bad_magic = good.clone();
    bad_magic[0] = 7;
    let mut unknown_id = good.clone();
    unknown_id[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let mut corrupt = good[..5].to_vec();
    corrupt.extend_from_slice(&[0xff; 12]);

    for (bytes, reason) in [
        (bad_magic, "bad_magic_byte"),
        (vec![0, 0], "bad_magic_byte"),
        (unknown_id, "unknown_schema_id"),
        (corrupt, "corrupt_avro"),
    ] {
        let error = codec.decode(Category::Audit, &bytes).await.unwrap_err();
        assert_eq!(error.dead_letter_reason(), Some(reason), "{error}");
        assert!(!error.is_retriable());
    }

    // A record of another category's schema on this topic is not silently accepted.
    let job = codec
        .encode(&samples::event(Category::Job, 1))
        .await
        .unwrap();
    let error = codec.decode(Category::Audit, &job).await.unwrap_err();
    assert_eq!(
        error.dead_letter_reason(),
        Some("schema_mismatch"),
        "{error}"
    );
}
