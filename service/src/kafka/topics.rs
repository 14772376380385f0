//! Creating the topics a component needs before it produces or subscribes. Tansu, like many
//! managed clusters, does not auto-create topics, and a client pointed at a missing topic fails
//! (producer) or sits idle (consumer) rather than saying why.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// How [`ensure_topics`] lays out the topics it creates. A topic that already exists is left
/// exactly as it is, whatever these say: changing partitions under running consumers would
/// move keys between partitions and break their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopics {
    pub partitions: i32,
    /// Replication factor; `-1` takes the broker's `default.replication.factor`.
    pub replication: i32,
    /// Topic configuration, e.g. `cleanup.policy=compact`.
    pub config: Vec<(String, String)>,
    /// Bounds the broker's work and the whole round trip.
    pub timeout: Duration,
}

impl NewTopics {
    /// `partitions` and `replication`, no topic configuration, a 30 s timeout.
    pub fn new(partitions: i32, replication: i32) -> Self {
        Self {
            partitions,
            replication,
            config: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Adds a topic configuration entry.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// What [`ensure_topics`] found for one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    Created,
    /// Already there; left as it was.
    Existed,
}

/// Why [`ensure_topics`] failed. Every variant names the topics concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    #[error("failed to create kafka admin client: {0}")]
    Client(#[source] Box<KafkaError>),
    /// The request as a whole failed (broker unreachable, timeout): nothing is known about
    /// any of the topics. Names the brokers, since an unreachable cluster is the usual cause.
    #[error("failed to create topics {topics} on kafka at {brokers}: {source}")]
    Request {
        topics: String,
        brokers: String,
        // Boxed, like `Client`'s: this error travels up through every start-up path, and
        // librdkafka's error is large.
        #[source]
        source: Box<KafkaError>,
    },
    /// The broker refused these topics (the others were created or existed).
    #[error("{}", describe_refused(refused))]
    Refused {
        refused: Vec<(String, RDKafkaErrorCode)>,
    },
}

fn describe_refused(refused: &[(String, RDKafkaErrorCode)]) -> String {
    refused
        .iter()
        .map(|(topic, code)| format!("failed to create topic {topic}: {code}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Creates those of `topics` that do not exist yet, laid out as `layout` says, through the
/// admin API of the cluster `client` reaches (pass `KafkaConfig::client_config()`, so TLS and
/// SASL apply). "Already exists" counts as success, so every instance of every component can
/// call this at start-up. Returns each topic's state, in the order asked.
pub async fn ensure_topics<S: AsRef<str>>(
    client: &ClientConfig,
    topics: &[S],
    layout: &NewTopics,
) -> Result<Vec<(String, TopicState)>, TopicError> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|error| TopicError::Client(Box::new(error)))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            layout.config.iter().fold(
                NewTopic::new(
                    topic.as_ref(),
                    layout.partitions,
                    TopicReplication::Fixed(layout.replication),
                ),
                |new_topic, (key, value)| new_topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(layout.timeout))
        .request_timeout(Some(layout.timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| TopicError::Request {
            topics: topics
                .iter()
                .map(AsRef::as_ref)
                .collect::<Vec<_>>()
                .join(","),
            brokers: client
                .get("bootstrap.servers")
                .unwrap_or("(bootstrap.servers unset)")
                .to_owned(),
            source: Box::new(source),
        })?;
    let mut states = Vec::with_capacity(results.len());
    let mut refused = Vec::new();
    for result in results {
        match result {
            Ok(topic) => {
                tracing::info!(%topic, partitions = layout.partitions, "created topic");
                states.push((topic, TopicState::Created));
            }
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                states.push((topic, TopicState::Existed));
            }
            Err((topic, code)) => refused.push((topic, code)),
        }
    }
    if refused.is_empty() {
        Ok(states)
    } else {
        Err(TopicError::Refused { refused })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_every_topic() {
        let error = TopicError::Refused {
            refused: vec![
                ("a".to_owned(), RDKafkaErrorCode::InvalidPartitions),
                ("b".to_owned(), RDKafkaErrorCode::PolicyViolation),
            ],
        };
        let text = error.to_string();
        assert!(text.contains("failed to create topic a: "), "{text}");
        assert!(text.contains("; failed to create topic b: "), "{text}");
    }

    #[test]
    fn layout_collects_topic_configuration() {
        let layout = NewTopics::new(1, -1)
            .config("cleanup.policy", "compact")
            .timeout(Duration::from_secs(10));
        assert_eq!(
            layout.config,
            [("cleanup.policy".to_owned(), "compact".to_owned())]
        );
        assert_eq!(layout.timeout, Duration::from_secs(10));
    }
}
