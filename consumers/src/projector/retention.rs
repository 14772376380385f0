//! Retention: drops whole `events` partitions of one category older than its configured days,
//! on a schedule. `job_status` is small and kept.

use std::time::{SystemTime, UNIX_EPOCH};

use ledgerline_schemas::Category;
use tokio_util::sync::CancellationToken;

use super::config::ProjectorConfig;
use crate::clickhouse::error::query_failed;
use crate::clickhouse::{validate_identifier, Result};

/// Drops expired partitions now and then every `retention_check_interval`, until shutdown.
pub async fn retention_loop(config: ProjectorConfig, shutdown: CancellationToken) {
    let client = config.clickhouse.client();
    let mut ticker = tokio::time::interval(config.retention_check_interval());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for category in super::STORED_CATEGORIES {
            let Some(days) = config.retention_days.for_category(category) else {
                continue;
            };
            if let Err(error) = drop_expired_partitions(
                &client,
                &config.clickhouse.database,
                category,
                days,
                SystemTime::now(),
            )
            .await
            {
                tracing::warn!(%category, %error, "retention check failed");
            }
        }
    }
}

/// Drops the partitions of `events` holding `category` rows ingested more than `keep_days`
/// days before `today` (UTC days: today and the `keep_days` days before it are kept) and
/// returns them as ClickHouse prints them (`('job',20261013)`). Partitions are found in
/// `system.parts`; one whose text does not parse is left alone and logged, since retention
/// must err towards keeping data.
pub async fn drop_expired_partitions(
    client: &clickhouse::Client,
    database: &str,
    category: Category,
    keep_days: u32,
    today: SystemTime,
) -> Result<Vec<String>> {
    let database = validate_identifier(database)?;
    let today_days = today
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let cutoff = yyyymmdd(today_days.saturating_sub(u64::from(keep_days)));

    let partitions: Vec<String> = client
        .query(
            "SELECT DISTINCT partition FROM system.parts \
             WHERE database = ? AND table = 'events' AND active ORDER BY partition",
        )
        .bind(database)
        .fetch_all()
        .await
        .map_err(query_failed(format!("partition list of {database}.events")))?;

    let mut dropped = Vec::new();
    for partition in partitions {
        let Some((partition_category, day)) = parse_partition(&partition) else {
            tracing::warn!(%database, %partition, "unrecognised events partition left in place");
            continue;
        };
        if partition_category != category.as_str() || day >= cutoff {
            continue;
        }
        client
            .query(&format!(
                "ALTER TABLE {database}.events DROP PARTITION (?, ?)"
            ))
            .bind(partition_category)
            .bind(day)
            .execute()
            .await
            .map_err(query_failed(format!(
                "drop of partition {partition} of {database}.events"
            )))?;
        tracing::info!(
            %database,
            %category,
            %partition,
            days = today_days.saturating_sub(days_since_epoch(day)),
            keep_days,
            "dropped expired events partition"
        );
        dropped.push(partition);
    }
    Ok(dropped)
}

/// `('job',20261013)` (how 18.16 and current ClickHouse print a `(String, UInt32)` partition
/// key) into its category and day.
fn parse_partition(text: &str) -> Option<(&str, u32)> {
    let inner = text.strip_prefix("('")?.strip_suffix(')')?;
    let (category, day) = inner.split_once("',")?;
    Some((category, day.trim().parse().ok()?))
}

/// `YYYYMMDD` of a day counted from 1970-01-01 (proleptic Gregorian, Howard Hinnant's
/// `civil_from_days`), so retention needs no date library.
fn yyyymmdd(days: u64) -> u32 {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    u32::try_from(year * 10_000 + month * 100 + day).unwrap_or(u32::MAX)
}

/// The inverse of [`yyyymmdd`] (`days_from_civil`); 0 for days before 1970.
fn days_since_epoch(yyyymmdd: u32) -> u64 {
    let (year, month, day) = (
        u64::from(yyyymmdd / 10_000),
        u64::from(yyyymmdd / 100 % 100),
        u64::from(yyyymmdd % 100),
    );
    let year = year - u64::from(month <= 2);
    let era = year / 400;
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_parse_as_clickhouse_prints_them() {
        assert_eq!(
            parse_partition("('job',20261013)"),
            Some(("job", 20_261_013))
        );
        assert_eq!(
            parse_partition("('connection', 20250101)"),
            Some(("connection", 20_250_101))
        );
        for bad in [
            "20261013",
            "('job')",
            "(job,20261013)",
            "('job',2026-10-13)",
            "",
        ] {
            assert_eq!(parse_partition(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(yyyymmdd(0), 19_700_101);
        // 2026-11-22, the samples' day.
        assert_eq!(yyyymmdd(20_779), 20_261_122);
        assert_eq!(yyyymmdd(20_779 - 40), 20_261_013);
        // Leap days.
        assert_eq!(yyyymmdd(11_016), 20_000_229);
        assert_eq!(yyyymmdd(19_417), 20_230_301);
        for days in (0..80_000).step_by(7) {
            assert_eq!(days_since_epoch(yyyymmdd(days)), days, "{days}");
        }
    }
}
