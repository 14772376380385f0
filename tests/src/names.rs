//! Random names, so tests sharing one broker and one ClickHouse never see each other's data.

/// `<prefix>_<12 hex chars>`: valid as a Kafka topic, a consumer group and a ClickHouse
/// database name (no dots or dashes, which ClickHouse identifiers would need quoted).
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

pub fn topic() -> String {
    unique("topic")
}

pub fn group() -> String {
    unique("group")
}

pub fn database() -> String {
    unique("db")
}
