//! The query API end to end: events published through the producer crate, projected and
//! archived by the real consumers, read back over HTTP from `ledgerline-api` with keys of each
//! role. One stack is shared by the tests of this file (each test isolates itself with its
//! own service names, actors and keys); see `api_faults.rs` for the tests that stop servers.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use ledgerline_producer::event::*;
use ledgerline_producer::Ledger;
use ledgerline_query_api::config::LimitsConfig;
use ledgerline_tests::names;
use serde_json::Value;

mod api_support;
use api_support::{encode, ids, recent_range, ApiStack};

static STACK: OnceLock<ApiStack> = OnceLock::new();

fn stack() -> &'static ApiStack {
    STACK.get_or_init(|| {
        ApiStack::start(LimitsConfig {
            rate_per_second: 200,
            rate_burst: 100,
            ..LimitsConfig::default()
        })
    })
}

fn actor(id: &str) -> Actor {
    Actor {
        id: id.to_owned(),
        kind: "user".to_owned(),
        ip: "192.0.2.7".to_owned(),
        user_agent: None,
    }
}

/// Publishes `count` system events (INFO, every third WARN, every fifth ERROR) for `service`.
async fn publish_system(ledger: &Ledger, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let level = if n % 5 == 0 {
            Level::Error
        } else if n % 3 == 0 {
            Level::Warn
        } else {
            Level::Info
        };
        let event = ledger
            .system(
                &format!("disk.check.{}", n % 2),
                level,
                "app::disk",
                &format!("disk check {n} done"),
            )
            .attribute("user_id", format!("u-{}", n % 4))
            .build();
        ids.push(event.envelope().event_id.to_string());
        ledger.send_event(event).await.unwrap();
    }
    ids
}

/// A page of `/v1/events` with `key` and `filters` (the range is added).
async fn events(key: &str, filters: &str) -> (u16, Value) {
    stack()
        .get(
            Some(key),
            &format!("/v1/events?{}&{filters}", recent_range()),
        )
        .await
}

/// Every event of a search, paged `limit` at a time through the cursor.
async fn page_all(key: &str, filters: &str, limit: u32) -> Vec<Value> {
    let range = recent_range();
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/events?{range}&{filters}&limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", encode(cursor)));
        }
        let (status, page) = stack().get(Some(key), &path).await;
        assert_eq!(status, 200, "{page}");
        all.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_fetches_and_counts_what_was_published() {
    let stack = stack();
    let key = stack.analyst(0);
    let service = names::unique("billing");
    let ledger = stack.ledger(&service).await;
    let published = publish_system(&ledger, 30).await;
    let filter = format!("service={service}");
    stack
        .wait_for(
            key,
            &format!("/v1/events?{}&{filter}&limit=1000", recent_range()),
            60,
            |page| ids(page).len() == 30,
        )
        .await;

    // Newest first, each published event once, with the shape the stream shares.
    let (status, page) = events(key, &format!("{filter}&limit=1000")).await;
    assert_eq!(status, 200);
    let listed = ids(&page);
    assert_eq!(
        listed.iter().collect::<BTreeSet<_>>(),
        published.iter().collect::<BTreeSet<_>>()
    );
    let times: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["occurred_at_us"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let first = &page["events"][0];
    assert_eq!(first["category"], "system");
    assert_eq!(first["service"], service.as_str());
    assert_eq!(first["target"], "app::disk");
    assert!(first["message"].as_str().unwrap().starts_with("disk check"));
    assert!(first["occurred_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(page["next_cursor"], Value::Null);

    // Paging 7 at a time returns the same events in the same order.
    let paged = page_all(key, &filter, 7).await;
    let paged_ids: Vec<String> = paged
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paged_ids, listed);

    // One event by id: the same JSON as in the list.
    let (status, one) = stack
        .get(Some(key), &format!("/v1/events/{}", listed[3]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one, page["events"][3]);
    let (status, missing) = stack
        .get(Some(key), &format!("/v1/events/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "not_found");

    // Filters: minimum level, name prefix, attribute, text, the search string.
    let count = |filters: String| {
        let filter = filter.clone();
        async move {
            ids(&events(key, &format!("{filter}&limit=1000&{filters}"))
                .await
                .1)
            .len()
        }
    };
    assert_eq!(
        count("level=warn".into()).await,
        (0..30).filter(|n| n % 5 == 0 || n % 3 == 0).count()
    );
    assert_eq!(count("level=error".into()).await, 6);
    assert_eq!(count("name=disk.check.1".into()).await, 15);
    assert_eq!(count("name=disk.check".into()).await, 30);
    assert_eq!(count("user_id=u-1,u-2".into()).await, 15);
    assert_eq!(count("text=CHECK%2012%20".into()).await, 1);
    assert_eq!(
        count(format!("q={}", encode("level:error -name:disk.check.1"))).await,
        3
    );
    assert_eq!(count(format!("q={}", encode("\"check 1\""))).await, 11);
    assert_eq!(
        count(format!("q={}", encode("name:disk.check.* user_id:u-3"))).await,
        7
    );

    // Stats: the histogram's counts are the events per level; top-N names the service.
    let (status, histogram) = stack
        .get(
            Some(key),
            &format!(
                "/v1/stats/histogram?{}&{filter}&interval=1h&by=level",
                recent_range()
            ),
        )
        .await;
    assert_eq!(status, 200, "{histogram}");
    let mut per_level: BTreeMap<String, u64> = BTreeMap::new();
    for bucket in histogram["buckets"].as_array().unwrap() {
        *per_level
            .entry(bucket["key"].as_str().unwrap().to_owned())
            .or_default() += bucket["count"].as_u64().unwrap();
    }
    assert_eq!(
        per_level,
        BTreeMap::from([
            ("ERROR".to_owned(), 6),
            ("INFO".to_owned(), 16),
            ("WARN".to_owned(), 8)
        ])
    );
    let (status, top) = stack
        .get(
            Some(key),
            &format!("/v1/stats/top?{}&{filter}&field=name", recent_range()),
        )
        .await;
    assert_eq!(status, 200, "{top}");
    assert_eq!(
        top["entries"],
        serde_json::json!([{"value": "disk.check.0", "count": 15}, {"value": "disk.check.1", "count": 15}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_show_latest_status_progress_and_timeline() {
    let stack = stack();
    let key = stack.analyst(1);
    let ledger = stack.ledger(&names::unique("scheduler")).await;
    let job_id = names::unique("job");
    let other_job = names::unique("job");
    for (status, progress) in [
        (JobStatus::Queued, 0),
        (JobStatus::Running, 10),
        (JobStatus::Running, 60),
        (JobStatus::Completed, 100),
    ] {
        let event = ledger
            .job("job.progress", &job_id, "backup", "Nightly backup", status)
            .progress(progress)
            .build();
        ledger.send_event(event).await.unwrap();
        if progress == 10 {
            for phase in [
                ConnectionPhase::Connect,
                ConnectionPhase::Command,
                ConnectionPhase::Disconnect,
            ] {
                let event = ledger
                    .connection("device.step", "dev-1", "Router 1", phase, Outcome::Success)
                    .job_id(&job_id)
                    .build();
                ledger.send_event(event).await.unwrap();
            }
        }
    }
    let event = ledger
        .job(
            "job.progress",
            &other_job,
            "backup",
            "Other",
            JobStatus::Running,
        )
        .progress(30)
        .build();
    ledger.send_event(event).await.unwrap();

    let detail = stack
        .wait_for(key, &format!("/v1/jobs/{job_id}"), 60, |body| {
            body["job"]["status"] == "COMPLETED" && body["timeline"].as_array().unwrap().len() == 7
        })
        .await;
    assert_eq!(detail["job"]["progress"], 100);
    assert_eq!(detail["job"]["job_name"], "Nightly backup");
    let timeline = detail["timeline"].as_array().unwrap();
    let categories: Vec<&str> = timeline
        .iter()
        .map(|e| e["category"].as_str().unwrap())
        .collect();
    assert_eq!(
        categories,
        [
            "job",
            "job",
            "connection",
            "connection",
            "connection",
            "job",
            "job"
        ]
    );
    let progress: Vec<i64> = timeline
        .iter()
        .filter(|e| e["category"] == "job")
        .map(|e| e["progress"].as_i64().unwrap())
        .collect();
    assert_eq!(progress, [0, 10, 60, 100]);

    let listed = stack
        .wait_for(key, "/v1/jobs?status=running&limit=1000", 30, |body| {
            body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|job| job["job_id"] == other_job.as_str())
        })
        .await;
    // The completed job was RUNNING once; listing by status reads the latest state only.
    assert!(!listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|job| job["job_id"] == job_id.as_str()));
    let (_, completed) = stack
        .get(Some(key), "/v1/jobs?status=COMPLETED&limit=1000")
        .await;
    assert!(completed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|job| job["job_id"] == job_id.as_str()));
    let (status, missing) = stack
        .get(Some(key), &format!("/v1/jobs/{}", names::unique("nojob")))
        .await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_sees_an_audit_event_outside_audit_review_and_only_auditors_get_in() {
    let stack = stack();
    let service = names::unique("iam");
    let ledger = stack.ledger(&service).await;
    let actor_id = names::unique("admin-user");
    let mut audit_ids = Vec::new();
    for n in 0..4 {
        let event = ledger
            .audit(
                "permission.change",
                actor(&actor_id),
                "grant",
                Outcome::Success,
                serde_json::json!({"n": n}),
            )
            .target("role", "billing-admin")
            .message("Granted the billing admin role")
            .build();
        audit_ids.push(event.envelope().event_id.to_string());
        ledger.send_event(event).await.unwrap();
    }
    publish_system(&ledger, 2).await;
    let auditor = stack.auditor(2);
    let audit_filter = format!("/v1/audit/events?{}&actor={actor_id}", recent_range());
    let page = stack
        .wait_for(auditor, &audit_filter, 60, |page| ids(page).len() == 4)
        .await;
    assert_eq!(
        ids(&page).into_iter().collect::<BTreeSet<_>>(),
        audit_ids.iter().cloned().collect()
    );
    let first = &page["events"][0];
    assert_eq!(first["action"], "grant");
    assert_eq!(first["actor"]["id"], actor_id.as_str());
    assert_eq!(
        first["target"],
        serde_json::json!({"kind": "role", "id": "billing-admin"})
    );
    assert_eq!(first["archive"]["topic"], "ledgerline.audit");
    assert_eq!(first["archive"]["hash"].as_str().unwrap().len(), 64);
    // Wait until the projector has stored them too, so the walls below are tested on data.
    stack
        .wait_for(
            stack.analyst(2),
            &format!("/v1/events?{}&service={service}", recent_range()),
            60,
            |p| ids(p).len() == 2,
        )
        .await;

    for key in [stack.analyst(2), stack.auditor(2), stack.admin(2)] {
        let range = recent_range();
        for filters in [
            format!("service={service}"),
            format!("category=audit&service={service}"),
            format!("actor={actor_id}"),
            format!("q={}", encode(&format!("category:audit actor:{actor_id}"))),
            format!(
                "q={}",
                encode(&format!("-category:system service:{service}"))
            ),
            "name=permission".to_owned(),
        ] {
            let (status, page) = stack
                .get(
                    Some(key),
                    &format!("/v1/events?{range}&{filters}&limit=1000"),
                )
                .await;
            assert_eq!(status, 200, "{filters}: {page}");
            assert!(
                page["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e["category"] != "audit"),
                "{filters}: {page}"
            );
            let (_, histogram) = stack
                .get(
                    Some(key),
                    &format!("/v1/stats/histogram?{range}&{filters}&interval=1h&by=category"),
                )
                .await;
            assert!(
                histogram["buckets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|b| b["key"] != "audit"),
                "{histogram}"
            );
            let (_, top) = stack
                .get(
                    Some(key),
                    &format!("/v1/stats/top?{range}&{filters}&field=name"),
                )
                .await;
            assert!(
                top["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|t| t["value"] != "permission.change"),
                "{top}"
            );
        }
        let (status, _) = stack
            .get(Some(key), &format!("/v1/events/{}", audit_ids[0]))
            .await;
        assert_eq!(status, 404);
    }

    // Audit review: the auditor only; no key is 401, a wrong key 401, other roles 403.
    for path in [
        audit_filter.clone(),
        format!("/v1/audit/events/{}/proof", audit_ids[0]),
        "/v1/audit/verify".to_owned(),
        "/v1/audit/export".to_owned(),
    ] {
        let (status, body) = stack.get(None, &path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        let (status, _) = stack.get(Some("llk_not-a-real-key"), &path).await;
        assert_eq!(status, 401, "{path}");
        for key in [stack.analyst(2), stack.admin(2)] {
            let (status, body) = stack.get(Some(key), &path).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (403, Some("forbidden")),
                "{path}: {body}"
            );
        }
    }
    // Each refused attempt is itself in the audit trail, as DENIED.
    let analyst_id = &stack.keys.analyst[2].1;
    let denied = stack
        .wait_for(
            auditor,
            &format!(
                "/v1/audit/events?{}&actor={analyst_id}&name=audit.archive.read&outcome=denied&limit=1000",
                recent_range()
            ),
            60,
            |page| ids(page).len() == 4,
        )
        .await;
    assert_eq!(denied["events"][0]["details"]["role"], "analyst");
    assert_eq!(denied["events"][0]["level"], "WARN");

    // A cursor of an analyst search cannot open audit review, nor one of audit review a search.
    let (_, audit_page) = stack
        .get(Some(auditor), &format!("{audit_filter}&limit=1"))
        .await;
    let audit_cursor = audit_page["next_cursor"].as_str().unwrap().to_owned();
    let (status, body) = stack
        .get(
            Some(stack.analyst(2)),
            &format!(
                "/v1/events?{}&actor={actor_id}&limit=1&cursor={}",
                recent_range(),
                encode(&audit_cursor)
            ),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_are_audited_and_proofs_verify_and_export_work() {
    let stack = stack();
    let ledger = stack.ledger(&names::unique("iam")).await;
    let actor_id = names::unique("reviewed-user");
    let mut audit_ids = Vec::new();
    for _ in 0..3 {
        let event = ledger
            .audit(
                "user.login.failure",
                actor(&actor_id),
                "login",
                Outcome::Failure,
                serde_json::json!({}),
            )
            .build();
        audit_ids.push(event.envelope().event_id.to_string());
        ledger.send_event(event).await.unwrap();
    }
    let (auditor, auditor_id) = &stack.keys.auditor[3];
    let filter = format!(
        "/v1/audit/events?{}&actor={actor_id}&outcome=failure",
        recent_range()
    );
    stack
        .wait_for(auditor, &filter, 60, |page| ids(page).len() == 3)
        .await;

    // Each of those reads was published as audit.archive.read, naming the key and the rows.
    let reads = stack
        .wait_for(
            auditor,
            &format!(
                "/v1/audit/events?{}&actor={auditor_id}&name=audit.archive.read&limit=1000",
                recent_range()
            ),
            60,
            |page| {
                page["events"].as_array().unwrap().iter().any(|event| {
                    event["details"]["rows"] == 3
                        && event["details"]["filter"]["actor"] == actor_id.as_str()
                })
            },
        )
        .await;
    let read = &reads["events"][0];
    assert_eq!(read["service"], "ledgerline-api");
    assert_eq!(read["actor"]["kind"], "api_key");
    assert_eq!(read["details"]["role"], "auditor");
    assert_eq!(read["details"]["route"], "/v1/audit/events");

    // A proof, once a checkpoint covers the event, checks offline against the archive's key.
    let mut proof_body = None;
    for _ in 0..120 {
        let (status, _, body) = stack
            .get_raw(
                Some(auditor),
                &format!("/v1/audit/events/{}/proof", audit_ids[1]),
            )
            .await;
        if status == 200 {
            proof_body = Some(body);
            break;
        }
        assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let proof_text =
        String::from_utf8(proof_body.expect("no checkpoint covered the event")).unwrap();
    let proof = ledgerline_consumers::archive::proof::from_json(&proof_text).unwrap();
    let mut trusted = ledgerline_consumers::archive::checkpoint::TrustedKeys::new();
    trusted.insert_hex(&stack.public_key_hex).unwrap();
    ledgerline_consumers::archive::proof::check(&proof, &trusted).unwrap();

    // The chain status: every partition intact, with its last checkpoint.
    let (status, report) = stack.get(Some(auditor), "/v1/audit/verify").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["intact"], true, "{report}");
    assert!(report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| !p["last_checkpoint"].is_null()));

    // The export is a tar of the bundle, which verifies offline.
    let (status, headers, body) = stack.get_raw(Some(auditor), "/v1/audit/export").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-tar");
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(body.as_slice())
        .unpack(dir.path())
        .unwrap();
    let bundle = dir.path().join("ledgerline-audit-export");
    assert!(bundle.join("manifest.json").exists());
    let report = ledgerline_consumers::archive::bundle::verify_bundle(&bundle, Some(&trusted))
        .await
        .unwrap();
    assert!(report.intact, "{}", report.to_text());

    // The proof, the verification and the export were each recorded before they were released.
    let wanted = [
        "/v1/audit/events/{event_id}/proof",
        "/v1/audit/verify",
        "/v1/audit/export",
    ];
    let records = stack
        .wait_for(
            auditor,
            &format!(
                "/v1/audit/events?{}&actor={auditor_id}&name=audit.archive.read&limit=1000",
                recent_range()
            ),
            60,
            |page| {
                let routes: BTreeSet<&str> = page["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|e| e["details"]["route"].as_str())
                    .collect();
                wanted.iter().all(|route| routes.contains(route))
            },
        )
        .await;
    let proof_record = records["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["details"]["route"] == wanted[0] && e["details"]["rows"] == 1)
        .unwrap();
    assert_eq!(
        proof_record["details"]["filter"]["event_id"],
        audit_ids[1].as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_malformed_parameter_is_a_400_that_names_it() {
    let stack = stack();
    let key = stack.analyst(4);
    let range = recent_range();
    let cases: Vec<(String, &str)> = vec![
        ("/v1/events?until=2026-01-01T00:00:00Z".into(), "`since`"),
        ("/v1/events?since=2026-01-01T00:00:00Z".into(), "`until`"),
        (
            "/v1/events?since=yesterday&until=2026-01-01T00:00:00Z".into(),
            "`since`",
        ),
        (
            "/v1/events?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z".into(),
            "`until`",
        ),
        (
            "/v1/events?since=2020-01-01T00:00:00Z&until=2026-01-01T00:00:00Z".into(),
            "`until`",
        ),
        (format!("/v1/events?{range}&limit=0"), "`limit`"),
        (format!("/v1/events?{range}&limit=1001"), "`limit`"),
        (format!("/v1/events?{range}&limit=ten"), "`limit`"),
        (format!("/v1/events?{range}&level=loud"), "`level`"),
        (format!("/v1/events?{range}&category=audits"), "`category`"),
        (format!("/v1/events?{range}&outcome=maybe"), "`outcome`"),
        (format!("/v1/events?{range}&cursor=garbage"), "`cursor`"),
        (format!("/v1/events?{range}&service="), "`service`"),
        (format!("/v1/events?{range}&text=a&text=b"), "`text`"),
        (format!("/v1/events?{range}&servce=x"), "`servce`"),
        (
            format!("/v1/events?{range}&q={}", encode("servce:x")),
            "`servce`",
        ),
        (format!("/v1/events?{range}&q={}", encode("\"open")), "`q`"),
        ("/v1/events/not-a-uuid".into(), "`event_id`"),
        ("/v1/events/%FF%FE".into(), "`event_id`"),
        ("/v1/jobs/%FF".into(), "`job_id`"),
        (format!("/v1/events?{range}&%FF=1"), "unknown parameter"),
        (format!("/v1/stats/histogram?{range}"), "`interval`"),
        (
            format!("/v1/stats/histogram?{range}&interval=1w"),
            "`interval`",
        ),
        (
            format!("/v1/stats/histogram?{range}&interval=1s"),
            "`interval`",
        ),
        (
            format!("/v1/stats/histogram?{range}&interval=1h&by=host"),
            "`by`",
        ),
        (format!("/v1/stats/top?{range}&field=host"), "`field`"),
        ("/v1/jobs?status=done".into(), "`status`"),
        ("/v1/jobs?limit=-1".into(), "`limit`"),
        ("/v1/jobs/x?extra=1".into(), "`extra`"),
    ];
    for (path, named) in cases {
        let (status, body) = stack.get(Some(key), &path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(named),
            "{path}: {message} does not name {named}"
        );
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let auditor = stack.auditor(4);
    for (path, named) in [
        ("/v1/audit/verify?partition=-1", "`partition`"),
        ("/v1/audit/export?from=5&to=1", "`to`"),
        ("/v1/audit/events/x/proof", "`event_id`"),
    ] {
        let (status, body) = stack.get(Some(auditor), path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(named),
            "{body}"
        );
    }
    // Unknown routes and methods are JSON errors too.
    let (status, body) = stack.get(Some(key), "/v2/nothing").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let response = reqwest::Client::new()
        .delete(format!("{}/v1/events", stack.api))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_attempts_in_every_string_filter_come_back_as_data() {
    let stack = stack();
    let key = stack.analyst(5);
    let hostile: Vec<String> = vec![
        "x' OR '1'='1".into(),
        "x\\' OR 1=1 --".into(),
        "\\".into(),
        "a'); DROP TABLE ledgerline.events; --".into(),
        "x' UNION SELECT * FROM system.users --".into(),
        "/* comment */ x".into(),
        "nul\0byte".into(),
        "?".into(),
        "{database}".into(),
        "x".repeat(8_000),
    ];
    // One event whose strings are hostile is found by them, literally.
    let service = format!("svc-{}' OR '1'='1", names::unique("inj"));
    let ledger = stack.ledger(&service).await;
    let event = ledger
        .system(
            "inj.test",
            Level::Info,
            "app",
            "quote ' backslash \\ comment -- nul \0 end",
        )
        .attribute("user_id", "u' OR 1=1 --")
        .build();
    let event_id = event.envelope().event_id.to_string();
    ledger.send_event(event).await.unwrap();
    let found = stack
        .wait_for(
            key,
            &format!("/v1/events?{}&service={}", recent_range(), encode(&service)),
            60,
            |p| ids(p).len() == 1,
        )
        .await;
    assert_eq!(ids(&found), vec![event_id.clone()]);
    for (filter, value) in [
        ("user_id", "u' OR 1=1 --"),
        ("text", "backslash \\ comment --"),
        ("text", "nul \0 end"),
    ] {
        let (status, page) = events(
            key,
            &format!("service={}&{filter}={}", encode(&service), encode(value)),
        )
        .await;
        assert_eq!(
            (status, ids(&page)),
            (200, vec![event_id.clone()]),
            "{filter}={value:?}"
        );
    }
    let (_, page) = events(
        key,
        &format!(
            "q={}",
            encode(&format!(
                "service:\"{}\"",
                service.replace('\\', "\\\\").replace('"', "\\\"")
            ))
        ),
    )
    .await;
    assert_eq!(ids(&page), vec![event_id.clone()]);

    // Every hostile value in every string filter is compared as data: nothing matches but
    // what holds it literally (the event above holds a backslash in its message), and nothing
    // breaks.
    for filter in [
        "service",
        "host",
        "name",
        "job_id",
        "device_id",
        "user_id",
        "request_id",
        "trace_id",
        "actor",
        "action",
        "target",
        "text",
    ] {
        for value in &hostile {
            let (status, page) = events(key, &format!("{filter}={}", encode(value))).await;
            assert_eq!(status, 200, "{filter}={value:?}: {page}");
            for event in page["events"].as_array().unwrap() {
                assert!(
                    filter == "text" && event["message"].as_str().unwrap().contains(value.as_str()),
                    "{filter}={value:?} matched {event}"
                );
            }
        }
    }
    for value in &hostile[..9] {
        let q = format!(
            "service:\"{}\"",
            value.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let (status, page) = events(key, &format!("q={}", encode(&q))).await;
        assert_eq!((status, ids(&page).len()), (200, 0), "{q:?}: {page}");
    }
    // The tables are still there.
    let (status, _) = events(key, &format!("service={}", encode(&service))).await;
    assert_eq!(status, 200);
    // A value beyond the length limit is refused by name, not sent anywhere.
    let (status, body) = events(key, &format!("service={}", "y".repeat(60_000))).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`service`"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_while_events_arrive_neither_repeats_nor_skips() {
    let stack = stack();
    let key = stack.analyst(6);
    let service = names::unique("paging");
    let ledger = stack.ledger(&service).await;
    let now_us = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
    // 300 events spread over the last 30 minutes, some sharing a microsecond (the keyset's
    // tie-break on event_id is exercised).
    let mut initial = BTreeSet::new();
    for n in 0..300i64 {
        let mut event = ledger
            .system("page.item", Level::Info, "app", &format!("item {n}"))
            .build();
        if let Event::System(system) = &mut event {
            system.envelope.occurred_at = now_us - 60_000_000 - (n / 3) * 5_000_000;
        }
        initial.insert(event.envelope().event_id.to_string());
        ledger.send_event(event).await.unwrap();
    }
    let filter = format!("service={service}");
    stack
        .wait_for(
            key,
            &format!("/v1/events?{}&{filter}&limit=1000", recent_range()),
            60,
            |p| ids(p).len() == 300,
        )
        .await;
    // While paging, more events arrive at random times across the whole range.
    let writer = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut added = BTreeSet::new();
            for n in 0..150i64 {
                let mut event = ledger
                    .system("page.item", Level::Info, "app", &format!("late {n}"))
                    .build();
                if let Event::System(system) = &mut event {
                    system.envelope.occurred_at =
                        now_us - 60_000_000 - (n * 7_919 % 500) * 3_000_000;
                }
                added.insert(event.envelope().event_id.to_string());
                ledger.send_event(event).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            added
        })
    };
    let mut seen = Vec::new();
    let range = recent_range();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/events?{range}&{filter}&limit=13");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", encode(cursor)));
        }
        let (status, page) = stack.get(Some(key), &path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        tokio::time::sleep(Duration::from_millis(30)).await;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let added = writer.await.unwrap();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an event was repeated across pages"
    );
    let missing: Vec<_> = initial.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "skipped {} events present before paging began",
        missing.len()
    );
    assert!(unique
        .iter()
        .all(|id| initial.contains(id) || added.contains(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_exactly_the_served_routes_and_metrics_count_them() {
    let stack = stack();
    let (status, doc) = stack.get(None, "/openapi.json").await;
    assert_eq!(status, 200);
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    documented.sort();
    let served = [
        "/",
        "/console/{path}",
        "/health",
        "/metrics",
        "/openapi.json",
        "/v1/audit/events",
        "/v1/audit/events/{event_id}/proof",
        "/v1/audit/export",
        "/v1/audit/verify",
        "/v1/events",
        "/v1/events/{event_id}",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/stats/histogram",
        "/v1/stats/top",
        "/v1/stream",
        "/v1/whoami",
    ];
    let expected: Vec<(String, String)> = served
        .iter()
        .map(|p| ("GET".to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, expected);
    // Each documented route is served (not the fallback's "no route"), and a path next to
    // them is not.
    let auditor = stack.auditor(7);
    for (_, path) in &documented {
        let concrete = path
            .replace("{event_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{job_id}", "j")
            .replace("{path}", "js/app.js");
        let (status, body) = stack.get(Some(auditor), &concrete).await;
        assert!(
            !(status == 404
                && body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("no route")),
            "{path} is documented but not served"
        );
        assert_ne!(status, 405, "{path}");
    }
    let (status, body) = stack.get(Some(auditor), "/v1/event").await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("no route"));

    let (status, health) = stack.get(None, "/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["components"]["clickhouse"]["status"], "ok");
    assert_eq!(health["components"]["audit_clickhouse"]["status"], "ok");
    let (status, _, metrics) = stack.get_raw(None, "/metrics").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("ledgerline_api_requests_total{")
                && line.contains("route=\"/v1/audit/events/{event_id}/proof\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains("ledgerline_api_request_duration_seconds"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_limit_gets_429_with_retry_after_and_others_do_not() {
    let stack = stack();
    let key = stack.admin(7);
    let path = "/v1/jobs?limit=1";
    let requests = (0..250).map(|_| stack.get_raw(Some(key), path));
    let answers = futures::future::join_all(requests).await;
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status == 429)
        .collect();
    assert!(
        !limited.is_empty(),
        "250 concurrent requests against a burst of 100"
    );
    let mut codes = BTreeSet::new();
    for (_, headers, body) in &limited {
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
        let body: Value = serde_json::from_slice(body).unwrap();
        codes.insert(body["error"]["code"].as_str().unwrap().to_owned());
    }
    // Over the rate, and (among those admitted) over the 8 requests a key may have running.
    assert_eq!(
        codes,
        BTreeSet::from(["rate_limited".to_owned(), "too_many_in_flight".to_owned()])
    );
    // Another key is not affected.
    let (status, _) = stack.get(Some(stack.admin(6)), path).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let stack = stack();
    let (status, headers, body) = stack.get_raw(None, "/").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("/console/js/app.js"), "{html}");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    // Every script the page loads is served, as JavaScript, and revalidates with a 304.
    for file in [
        "js/app.js",
        "js/api.js",
        "js/explore.js",
        "js/tail.js",
        "console.css",
    ] {
        let (status, headers, body) = stack.get_raw(None, &format!("/console/{file}")).await;
        assert_eq!(status, 200, "{file}");
        assert!(!body.is_empty());
        let etag = headers["etag"].to_str().unwrap().to_owned();
        let response = reqwest::Client::new()
            .get(format!("{}/console/{file}", stack.api))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 304, "{file}");
    }
    let (_, headers, _) = stack.get_raw(None, "/console/js/app.js").await;
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    // Not a file of the console: the API's JSON 404, with no path tricks. `%2F` keeps the
    // dots inside one path segment, so the URL is not normalised on the way and the console
    // handler itself sees `js/../../Cargo.toml`.
    for path in [
        "/console/nope.js",
        "/console/js%2F..%2F..%2FCargo.toml",
        "/console/..%2Fsrc%2Flib.rs",
        "/console/%2Fetc%2Fpasswd",
    ] {
        let (status, body) = stack.get(None, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("no console file"),
            "{path}: {body}"
        );
    }
    let (status, body) = stack.get(None, "/console/").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &serde_json::json!("not_found"))
    );
    // The key check the console signs in with.
    let (status, who) = stack.get(Some(stack.auditor(6)), "/v1/whoami").await;
    assert_eq!(status, 200);
    assert_eq!(who["role"], "auditor");
    assert_eq!(who["can_review_audit"], true);
    assert_eq!(who["key_id"], stack.keys.auditor[6].1.as_str());
    let (status, who) = stack.get(Some(stack.analyst(6)), "/v1/whoami").await;
    assert_eq!(
        (status, &who["role"], &who["can_review_audit"]),
        (
            200,
            &serde_json::json!("analyst"),
            &serde_json::json!(false)
        )
    );
    let (status, body) = stack.get(Some("llk_wrong"), "/v1/whoami").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
}
