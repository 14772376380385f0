//! `ledgerline-registry` owns a Confluent-compatible schema registry: the REST subset clients
//! use, compatibility checks under Avro resolution rules, and storage in the compacted Kafka
//! topic `_schemas`. It exists for places where Confluent Schema Registry or Karapace cannot
//! be installed; every client talks to it only through the Confluent API, so either can
//! replace it. The implementation arrives with the schemas-and-registry issue.
