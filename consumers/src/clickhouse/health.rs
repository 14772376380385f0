//! The `/health` every ClickHouse sink's consumer serves.

use std::time::Duration;

use ledgerline_service::http::Health;
use ledgerline_service::kafka::KafkaProbe;

use crate::runtime::ConsumerStatus;

/// Kafka answers, ClickHouse answers, the sink's last write went through (`writes`, reported
/// under `writes_name`: a dropped table or a revoked grant leaves the server answering while
/// every write fails), and the consumer makes progress.
pub fn sink_health<W>(
    probe: KafkaProbe,
    client: clickhouse::Client,
    writes_name: &'static str,
    writes: W,
    status: ConsumerStatus,
) -> Health
where
    W: Fn() -> Result<(), String> + Send + Sync + 'static,
{
    Health::new()
        .with_check("kafka", move || {
            let probe = probe.clone();
            async move { probe.check(Duration::from_secs(2)).await.map(|_| ()) }
        })
        .with_check("clickhouse", move || {
            let client = client.clone();
            async move {
                client
                    .query("SELECT 1")
                    .fetch_one::<u8>()
                    .await
                    .map(|_| ())
                    .map_err(|error| error.to_string())
            }
        })
        .with_check(writes_name, move || {
            let result = writes();
            async move { result }
        })
        .with_check("consumer", move || {
            let status = status.clone();
            async move { status.check() }
        })
}
