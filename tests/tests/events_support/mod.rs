//! What tests that publish events through the real client share: the event topics created
//! before anything subscribes (the broker does not auto-create them), and a `Ledger` for a
//! given broker and registry.

#![allow(dead_code)]

use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_schemas::Category;
use ledgerline_service::kafka::{KafkaConfig, NewTopics};
use ledgerline_service::schema_registry::SchemaRegistryConfig;

/// Creates every category's topic and the dead-letter topic with `partitions` each.
pub async fn create_event_topics(broker: &ledgerline_tests::Broker, partitions: i32) {
    let mut topics: Vec<&str> = Category::ALL.iter().map(|c| c.topic_name()).collect();
    topics.push(DLQ_TOPIC);
    ledgerline_service::kafka::ensure_topics(
        &broker.client_config(),
        &topics,
        &NewTopics::new(partitions, 1),
    )
    .await
    .unwrap();
}

/// A producer publishing to `brokers` with the schemas of the registry at `registry_url`.
pub async fn ledger_for(brokers: &str, registry_url: &str, config: ProducerConfig) -> Ledger {
    Ledger::builder(config.service_name.clone())
        .config(config)
        .kafka(KafkaConfig {
            brokers: brokers.to_owned(),
            ..KafkaConfig::default()
        })
        .schema_registry(SchemaRegistryConfig {
            url: registry_url.to_owned(),
            ..SchemaRegistryConfig::default()
        })
        .build()
        .await
        .unwrap()
}
