//! Topic and subject names. One Kafka topic per category, so each consumer subscribes to the
//! categories it projects and a flood in one category cannot starve another's partitions.

use std::fmt;
use std::str::FromStr;

/// Prefix of every Ledgerline topic.
pub const TOPIC_PREFIX: &str = "ledgerline.";

/// Where consumers send records they cannot process, with headers naming source and reason.
pub const DLQ_TOPIC: &str = "ledgerline.dlq";

/// The event categories. Each has its own topic, Avro record type and partition key. On the
/// wire (the Avro `Category` enum) the symbols are upper case.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Category {
    Audit,
    Job,
    Connection,
    System,
    Session,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::Audit,
        Category::Job,
        Category::Connection,
        Category::System,
        Category::Session,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Category::Audit => "audit",
            Category::Job => "job",
            Category::Connection => "connection",
            Category::System => "system",
            Category::Session => "session",
        }
    }

    /// `ledgerline.<category>`.
    pub const fn topic_name(self) -> &'static str {
        match self {
            Category::Audit => "ledgerline.audit",
            Category::Job => "ledgerline.job",
            Category::Connection => "ledgerline.connection",
            Category::System => "ledgerline.system",
            Category::Session => "ledgerline.session",
        }
    }

    /// The category whose events `topic` carries, `None` for any other topic (the dead-letter
    /// topic, a stranger's): the inverse of [`Category::topic_name`].
    pub fn from_topic(topic: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|category| category.topic_name() == topic)
    }

    /// Schema-registry subject under TopicNameStrategy: `<topic>-value`.
    pub fn subject(self) -> String {
        format!("{}-value", self.topic_name())
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event category `{0}` (expected audit, job, connection, system or session)")]
pub struct UnknownCategory(pub String);

impl FromStr for Category {
    type Err = UnknownCategory;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|category| category.as_str() == text)
            .ok_or_else(|| UnknownCategory(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_back_to_their_categories() {
        for category in Category::ALL {
            assert_eq!(Category::from_topic(category.topic_name()), Some(category));
        }
        assert_eq!(Category::from_topic("ledgerline.dlq"), None);
        assert_eq!(Category::from_topic("job"), None);
    }

    #[test]
    fn names_follow_topic_name_strategy() {
        assert_eq!(Category::Job.topic_name(), "ledgerline.job");
        assert_eq!(Category::Audit.subject(), "ledgerline.audit-value");
        for category in Category::ALL {
            assert_eq!(category.topic_name(), format!("{TOPIC_PREFIX}{category}"));
        }
    }

    #[test]
    fn every_category_round_trips_through_its_name() {
        for category in Category::ALL {
            assert_eq!(category.as_str().parse::<Category>(), Ok(category));
        }
        assert!("jobs"
            .parse::<Category>()
            .unwrap_err()
            .to_string()
            .contains("`jobs`"));
    }
}
