//! The web console in headless Chromium, against a whole stack (broker on SQLite, registry,
//! ClickHouse, projector, archiver, `ledgerline-api`), each test asserting what a person
//! would see: names in the table, bars that match the API, a live event showing up (and not
//! while paused), a progress bar reaching 100 %, a refusal for an analyst on the audit page,
//! and the chain going from intact to broken after a row is changed in ClickHouse. Each test
//! saves screenshots under `<target>/console-screenshots/` (docs/console.md shows them).

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::Locator;
use ledgerline_producer::event::*;
use ledgerline_producer::Ledger;
use ledgerline_tests::{names, BrokerStorage};
use serde_json::Value;

mod api_support;
mod console_support;
use api_support::{encode, ApiStack, StackOptions};
use console_support::{one_at_a_time, Browser};

static STACK: OnceLock<ApiStack> = OnceLock::new();

/// SQLite: the paused live tail resumes from a cursor, which reads from mid-batch offsets.
fn stack() -> &'static ApiStack {
    STACK.get_or_init(|| {
        ApiStack::start_with(StackOptions {
            storage: BrokerStorage::Sqlite,
            ..StackOptions::default()
        })
    })
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn send(ledger: &Ledger, event: ledgerline_producer::event::Event) -> String {
    let id = event.envelope().event_id.to_string();
    ledger.send_event(event).await.unwrap();
    id
}

/// Waits until `/v1/events` holds `count` events of `service` (the projector has them).
async fn stored(stack: &ApiStack, key: &str, service: &str, count: usize) {
    let path = format!(
        "/v1/events?{}&service={}&limit=1000",
        api_support::recent_range(),
        encode(service)
    );
    stack
        .wait_for(key, &path, 60, |page| {
            page["events"].as_array().is_some_and(|e| e.len() >= count)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_signs_in_searches_and_finds_the_events_by_name() {
    let stack = stack();
    let service = names::unique("console-explore");
    let job_id = names::unique("job");
    let ledger = stack.ledger(&service).await;
    // Older events first, more than a page of them, so "Load more" has something to load.
    for n in 0..110 {
        let event = ledger
            .system(
                &format!("console.filler.{n}"),
                Level::Debug,
                "app::fill",
                "filler",
            )
            .build();
        ledger.publish_event(event).await.unwrap();
    }
    ledger.flush(Duration::from_secs(30)).await.unwrap();
    let mut published = Vec::new();
    for (n, status) in [JobStatus::Queued, JobStatus::Running, JobStatus::Failed]
        .into_iter()
        .enumerate()
    {
        let name = format!("console.check.{n}");
        let event = ledger
            .job(&name, &job_id, "check", "Console check", status)
            .message(format!("check number {n}"))
            .attribute("user_id", "u-42")
            .build();
        send(&ledger, event).await;
        published.push(name);
    }
    let unrelated = stack.ledger(&names::unique("console-other")).await;
    let event = unrelated
        .system("unrelated.event", Level::Info, "app::other", "not this one")
        .build();
    send(&unrelated, event).await;
    stored(stack, stack.analyst(0), &service, 113).await;

    let _one = one_at_a_time().await;
    let browser = Browser::open(&stack.api, "explore").await;
    // A key the server does not know: back at sign-in, with the API's message.
    browser.goto("#/explore").await;
    let input = browser
        .client
        .wait()
        .for_element(Locator::Id("api-key"))
        .await
        .unwrap();
    input.send_keys("llk_not-a-real-key").await.unwrap();
    browser.click("form.signin button[type=submit]").await;
    let refused = browser
        .wait_js(
            "the refusal of a bad key",
            "const m = document.getElementById('signin-message'); return m && m.textContent;",
            Duration::from_secs(20),
        )
        .await;
    assert!(
        refused.as_str().unwrap().contains("That key was refused"),
        "{refused}"
    );

    assert_eq!(browser.sign_in(stack.analyst(0)).await, "analyst");
    // Search the last 15 minutes for the service, through the form.
    browser.goto("#/explore?range=15m").await;
    browser
        .client
        .wait()
        .for_element(Locator::Id("q"))
        .await
        .unwrap();
    browser.type_into("#q", &format!("service:{service}")).await;
    browser.click("form.toolbar button[type=submit]").await;
    browser
        .wait_js(
            "a page of rows in the table",
            "const r = document.querySelector('section.results'); return r && r.dataset.searchedFor === location.hash && document.querySelectorAll('tr.event-row').length === 100;",
            Duration::from_secs(30),
        )
        .await;
    let shown = browser.table_names().await;
    assert_eq!(
        shown[..3],
        ["console.check.2", "console.check.1", "console.check.0"]
    );
    assert!(shown[3..]
        .iter()
        .all(|name| name.starts_with("console.filler.")));
    assert_eq!(published.len(), 3);
    // The query is in the URL, so the view can be shared.
    let url = browser.client.current_url().await.unwrap();
    assert!(
        url.as_str().contains(&encode(&service)) || url.as_str().contains(&service),
        "{url}"
    );
    assert!(url.as_str().contains("range=15m"), "{url}");
    browser.screenshot("explore").await;
    // "Load more" pages on through the cursor: the rest, each once, and then no more button.
    browser.click("#load-more").await;
    browser
        .wait_js(
            "the second page",
            "return document.querySelectorAll('tr.event-row').length === 113;",
            Duration::from_secs(30),
        )
        .await;
    let ids = browser
        .js("const ids = [...document.querySelectorAll('tr.event-row')].map(r => r.dataset.eventId); return [new Set(ids).size, document.getElementById('load-more').hidden];")
        .await;
    assert_eq!(ids, serde_json::json!([113, true]));
    browser
        .js("document.querySelector('.table-scroll').scrollTop = 0; return true;")
        .await;

    // A row opens into its fields; the job id is a link that filters on it.
    // Every control has a label, and a row opens from the keyboard.
    let unlabelled = browser
        .js("return [...document.querySelectorAll('input, select')].filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id);")
        .await;
    assert_eq!(unlabelled, serde_json::json!([]));
    browser
        .client
        .find(Locator::Css("tr.event-row"))
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    let link = browser
        .wait_js(
            "the job_id link in the opened row",
            "const a = [...document.querySelectorAll('tr.detail a.id-link')].find(a => a.title === 'Filter on job_id'); return a && a.textContent;",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(link, Value::String(job_id.clone()));
    let attribute = browser
        .js("return [...document.querySelectorAll('tr.detail a.id-link')].some(a => a.title === 'Filter on user_id' && a.textContent === 'u-42');")
        .await;
    assert_eq!(
        attribute,
        Value::Bool(true),
        "the user_id attribute is a filter link"
    );
    browser.screenshot("explore-event").await;
    browser
        .client
        .find(Locator::Css(
            "tr.detail a.id-link[title='Filter on job_id']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let q = browser
        .wait_js(
            "the search box to hold the job filter",
            "const q = document.getElementById('q'); return q && q.value.includes('job_id:') && q.value;",
            Duration::from_secs(10),
        )
        .await;
    assert!(q.as_str().unwrap().contains(&job_id), "{q}");
    browser
        .wait_js(
            "the job's three events",
            "return document.querySelectorAll('tr.event-row').length === 3;",
            Duration::from_secs(30),
        )
        .await;
    // A parse error is shown with the API's message, not a blank page.
    browser.type_into("#q", "servce:billing").await;
    browser.click("form.toolbar button[type=submit]").await;
    let error = browser
        .wait_js(
            "the search error",
            "const n = document.querySelector('#explore-notices .notice-error'); return n && n.textContent;",
            Duration::from_secs(20),
        )
        .await;
    assert!(error.as_str().unwrap().contains("bad_search"), "{error}");
    assert!(error.as_str().unwrap().contains("servce"), "{error}");

    // A narrow window: no sideways scrolling of the page, the table still there.
    browser.client.set_window_size(480, 900).await.unwrap();
    browser
        .goto(&format!(
            "#/explore?range=15m&q={}",
            encode(&format!("service:{service}"))
        ))
        .await;
    browser
        .wait_js(
            "the narrow table",
            "const r = document.querySelector('section.results'); return r && r.dataset.searchedFor === location.hash && document.querySelectorAll('tr.event-row').length === 100;",
            Duration::from_secs(30),
        )
        .await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        .await;
    assert_eq!(
        overflow,
        Value::from(0),
        "the page scrolls sideways at 480 px"
    );
    browser.screenshot("explore-narrow").await;

    // A key that stops working mid-session (revoked, say): the next answer is a 401, and the
    // console goes back to sign-in with the API's message.
    browser
        .js("sessionStorage.setItem('ledgerline.key', 'llk_revoked'); return true;")
        .await;
    browser.goto("#/jobs").await;
    let message = browser
        .wait_js(
            "sign-in after a 401",
            "const m = document.getElementById('signin-message'); return m && m.textContent;",
            Duration::from_secs(20),
        )
        .await;
    assert!(
        message.as_str().unwrap().starts_with("Signed out:"),
        "{message}"
    );
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('ledgerline.key');")
            .await,
        Value::Null
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_histogram_draws_the_counts_the_api_gives() {
    let stack = stack();
    let service = names::unique("console-histogram");
    let ledger = stack.ledger(&service).await;
    let levels = [
        Level::Info,
        Level::Info,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Critical,
    ];
    for round in 0..3 {
        for (n, level) in levels.iter().enumerate() {
            let event = ledger
                .system(&format!("histogram.{n}"), *level, "app::h", "tick")
                .build();
            send(&ledger, event).await;
        }
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    stored(stack, stack.analyst(1), &service, 18).await;

    let now = time::OffsetDateTime::now_utc();
    let since = rfc3339(
        (now - time::Duration::minutes(10))
            .replace_second(0)
            .unwrap()
            .replace_nanosecond(0)
            .unwrap(),
    );
    let until = rfc3339(
        (now + time::Duration::minutes(1))
            .replace_nanosecond(0)
            .unwrap(),
    );
    let _one = one_at_a_time().await;
    let browser = Browser::open(&stack.api, "histogram").await;
    browser.sign_in(stack.analyst(1)).await;
    browser
        .goto(&format!(
            "#/explore?since={}&until={}&q={}",
            encode(&since),
            encode(&until),
            encode(&format!("service:{service}"))
        ))
        .await;
    let interval = browser
        .wait_js(
            "the histogram",
            "const c = document.querySelector('svg.histogram-chart'); return c && c.dataset.intervalSecs;",
            Duration::from_secs(30),
        )
        .await;
    let interval: u64 = interval.as_str().unwrap().parse().unwrap();
    let drawn = browser
        .js("return [...document.querySelectorAll('svg.histogram-chart rect.bar')].map(r => [r.dataset.startUs, r.dataset.level, Number(r.dataset.count), r.getBBox().height]);")
        .await;
    let mut bars: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for bar in drawn.as_array().unwrap() {
        assert!(
            bar[3].as_f64().unwrap() > 0.0,
            "a bar with no height: {bar}"
        );
        bars.insert(
            (
                bar[0].as_str().unwrap().parse().unwrap(),
                bar[1].as_str().unwrap().to_owned(),
            ),
            bar[2].as_u64().unwrap(),
        );
    }
    let (status, api) = stack
        .get(
            Some(stack.analyst(1)),
            &format!(
                "/v1/stats/histogram?since={}&until={}&interval={interval}&by=level&q={}",
                encode(&since),
                encode(&until),
                encode(&format!("service:{service}"))
            ),
        )
        .await;
    assert_eq!(status, 200, "{api}");
    let expected: BTreeMap<(i64, String), u64> = api["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                (
                    b["start_us"].as_i64().unwrap(),
                    b["key"].as_str().unwrap().to_owned(),
                ),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(bars, expected);
    assert_eq!(bars.values().sum::<u64>(), 18);
    browser.screenshot("histogram").await;

    // Dragging across the chart zooms: the URL gets the narrower range.
    let chart = browser
        .client
        .find(Locator::Css("svg.histogram-chart"))
        .await
        .unwrap();
    let drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement {
            element: chart,
            duration: None,
            x: 100.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveBy {
            duration: Some(Duration::from_millis(200)),
            x: 120.0,
            y: 0.0,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    browser.client.perform_actions(drag).await.unwrap();
    let zoomed = browser
        .wait_js(
            "a zoomed range in the URL",
            &format!(
                "const p = new URLSearchParams(location.hash.split('?')[1] || ''); return p.get('since') && p.get('since') !== '{since}' && [p.get('since'), p.get('until')];"
            ),
            Duration::from_secs(10),
        )
        .await;
    let parse = |text: &Value| {
        time::OffsetDateTime::parse(
            text.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let (zoom_since, zoom_until) = (parse(&zoomed[0]), parse(&zoomed[1]));
    let (since_at, until_at) = (
        parse(&Value::from(since.clone())),
        parse(&Value::from(until.clone())),
    );
    assert!(
        zoom_since > since_at && zoom_until < until_at && zoom_since < zoom_until,
        "{zoomed}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_shows_a_new_event_at_once_and_a_paused_tail_does_not() {
    let stack = stack();
    let service = names::unique("console-live");
    let ledger = stack.ledger(&service).await;
    let _one = one_at_a_time().await;
    let browser = Browser::open(&stack.api, "live").await;
    browser.sign_in(stack.analyst(2)).await;
    browser
        .goto(&format!(
            "#/explore?range=15m&q={}&live=1",
            encode(&format!("service:{service}"))
        ))
        .await;
    browser
        .wait_js(
            "the tail to be live",
            "const s = document.getElementById('live-status'); return s && s.dataset.state === 'live';",
            Duration::from_secs(30),
        )
        .await;
    let shows = |name: &str| {
        format!("return [...document.querySelectorAll('tr.event-row.live .event-name')].some(e => e.textContent === '{name}');")
    };

    let event = ledger
        .system("live.first", Level::Info, "app::live", "first")
        .build();
    send(&ledger, event).await;
    let acknowledged = Instant::now();
    browser
        .wait_js(
            "live.first on the page",
            &shows("live.first"),
            Duration::from_secs(30),
        )
        .await;
    let took = acknowledged.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "the live event took {took:?} to show (the console promises 2 s)"
    );
    browser.screenshot("live-tail").await;

    // Paused: a new event does not show.
    browser.click("#pause").await;
    browser
        .wait_js(
            "the tail to pause",
            "return document.getElementById('live-status').dataset.state === 'paused';",
            Duration::from_secs(10),
        )
        .await;
    let event = ledger
        .system("live.second", Level::Warn, "app::live", "second")
        .build();
    send(&ledger, event).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        browser.js(&shows("live.second")).await,
        Value::Bool(false),
        "a paused tail showed a new event"
    );
    browser.screenshot("live-tail-paused").await;

    // Resumed from the cursor: the event published while paused arrives, once.
    browser.click("#pause").await;
    browser
        .wait_js(
            "live.second after resuming",
            &shows("live.second"),
            Duration::from_secs(30),
        )
        .await;
    let event = ledger
        .system("live.third", Level::Error, "app::live", "third")
        .build();
    send(&ledger, event).await;
    browser
        .wait_js(
            "live.third after resuming",
            &shows("live.third"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        browser
            .table_names()
            .await
            .into_iter()
            .filter(|n| n.starts_with("live."))
            .collect::<Vec<_>>(),
        ["live.third", "live.second", "live.first"],
        "newest on top, each once"
    );

    // No layout jumps: with the table scrolled to read older rows, rows arriving on top do
    // not move the rows being read.
    for n in 0..40 {
        let event = ledger
            .system(&format!("fill.{n}"), Level::Info, "app::live", "filler")
            .build();
        send(&ledger, event).await;
    }
    browser
        .wait_js(
            "the filler rows",
            &shows("fill.39"),
            Duration::from_secs(30),
        )
        .await;
    let read = browser
        .js("const box = document.querySelector('.table-scroll'); box.scrollTop = 300; const row = [...box.querySelectorAll('tr.event-row')].find(r => r.getBoundingClientRect().top > box.getBoundingClientRect().top + 40); row.id = 'being-read'; return row.getBoundingClientRect().top;")
        .await;
    for n in 0..5 {
        let event = ledger
            .system(&format!("more.{n}"), Level::Info, "app::live", "more")
            .build();
        send(&ledger, event).await;
    }
    browser
        .wait_js("the new rows", &shows("more.4"), Duration::from_secs(30))
        .await;
    let after = browser
        .js("return document.getElementById('being-read').getBoundingClientRect().top;")
        .await;
    assert!(
        (read.as_f64().unwrap() - after.as_f64().unwrap()).abs() < 1.0,
        "the row being read moved from {read} to {after}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_progress_bar_reaches_100_percent_as_it_is_published() {
    let stack = stack();
    let service = names::unique("console-jobs");
    let job_id = names::unique("job");
    let ledger = stack.ledger(&service).await;
    let event = ledger
        .job(
            "job.progress",
            &job_id,
            "backup",
            "Nightly backup",
            JobStatus::Queued,
        )
        .progress(0)
        .build();
    send(&ledger, event).await;
    stack
        .wait_for(
            stack.analyst(3),
            &format!("/v1/jobs/{}", encode(&job_id)),
            60,
            |_| true,
        )
        .await;

    let _one = one_at_a_time().await;
    let browser = Browser::open(&stack.api, "jobs").await;
    browser.sign_in(stack.analyst(3)).await;
    browser.goto(&format!("#/jobs/{}", encode(&job_id))).await;
    let progress = "const p = document.querySelector('.job-header [role=progressbar]'); return p && Number(p.getAttribute('aria-valuenow'));";
    browser
        .wait_js(
            "the job page to go live",
            "const s = document.querySelector('.live-status'); return s && s.dataset.state === 'live';",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(browser.js(progress).await, Value::from(0));
    let connection = ledger
        .connection(
            "device.connect",
            "dev-7",
            "router-7",
            ConnectionPhase::Connect,
            Outcome::Success,
        )
        .job_id(&job_id)
        .build();
    send(&ledger, connection).await;
    for percent in [25u8, 50, 75] {
        let event = ledger
            .job(
                "job.progress",
                &job_id,
                "backup",
                "Nightly backup",
                JobStatus::Running,
            )
            .progress(percent)
            .build();
        send(&ledger, event).await;
        browser
            .wait_js(
                &format!("the bar drawn at {percent} %"),
                &format!("const p = document.querySelector('.job-header [role=progressbar]'); if (!p || p.getAttribute('aria-valuenow') !== '{percent}') return false; const f = p.querySelector('.progress-fill'); return Math.abs(100 * f.getBoundingClientRect().width / p.getBoundingClientRect().width - {percent}) < 1;"),
                Duration::from_secs(30),
            )
            .await;
    }
    browser.screenshot("job-running").await;
    let event = ledger
        .job(
            "job.progress",
            &job_id,
            "backup",
            "Nightly backup",
            JobStatus::Completed,
        )
        .progress(100)
        .build();
    send(&ledger, event).await;
    browser
        .wait_js(
            "the bar at 100 % and the job completed",
            "const p = document.querySelector('.job-header [role=progressbar]'); const s = document.querySelector('.job-header .status'); return p && p.getAttribute('aria-valuenow') === '100' && s.textContent === 'COMPLETED';",
            Duration::from_secs(30),
        )
        .await;
    // The bar is drawn full, and the timeline has every event once, the connection included.
    browser
        .wait_js(
            "the bar drawn full",
            "const f = document.querySelector('.job-header .progress-fill'); return Math.round(100 * f.getBoundingClientRect().width / f.parentElement.getBoundingClientRect().width) === 100;",
            Duration::from_secs(10),
        )
        .await;
    let rows = browser
        .js("return [...document.querySelectorAll('table.timeline tbody tr')].map(r => r.children[2].textContent);")
        .await;
    assert_eq!(
        rows,
        serde_json::json!([
            "job.progress",
            "device.connect",
            "job.progress",
            "job.progress",
            "job.progress",
            "job.progress"
        ])
    );
    browser.screenshot("job").await;

    // The list shows it completed, with a full bar.
    browser.goto("#/jobs?status=completed").await;
    browser
        .wait_js(
            "the job in the completed list at 100 %",
            &format!("const r = document.querySelector('tr[data-job-id=\"{job_id}\"] [role=progressbar]'); return r && r.getAttribute('aria-valuenow') === '100';"),
            Duration::from_secs(30),
        )
        .await;
    browser.screenshot("jobs").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_sees_no_audit_page_and_its_url_shows_a_refusal() {
    let stack = stack();
    let _one = one_at_a_time().await;
    let browser = Browser::open(&stack.api, "audit-refused").await;
    assert_eq!(browser.sign_in(stack.analyst(4)).await, "analyst");
    let nav = browser
        .js("return [...document.querySelectorAll('#nav a')].map(a => a.textContent);")
        .await;
    assert_eq!(nav, serde_json::json!(["Explore", "Jobs"]));
    browser.goto("#/audit").await;
    let refusal = browser
        .wait_js(
            "the refusal",
            "const r = document.getElementById('refusal'); return r && r.textContent;",
            Duration::from_secs(30),
        )
        .await;
    let refusal = refusal.as_str().unwrap();
    assert!(
        refusal.contains("forbidden") && refusal.contains("auditor role"),
        "{refusal}"
    );
    // No audit data reached the page.
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#chain, table.events').length;")
            .await,
        Value::from(0)
    );
    browser.screenshot("audit-refused").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_sees_the_chain_intact_then_broken_at_the_tampered_record() {
    let stack = stack();
    let service = names::unique("console-audit");
    let actor_id = names::unique("admin");
    let ledger = stack.ledger(&service).await;
    for action in ["grant", "revoke", "grant"] {
        let event = ledger
            .audit(
                "permission.change",
                Actor {
                    id: actor_id.clone(),
                    kind: "user".into(),
                    ip: "192.0.2.7".into(),
                    user_agent: None,
                },
                action,
                Outcome::Success,
                serde_json::json!({ "role": "billing-admin" }),
            )
            .target("role", "billing-admin")
            .build();
        send(&ledger, event).await;
    }
    let auditor = stack.auditor(0);
    let page = stack
        .wait_for(
            auditor,
            &format!(
                "/v1/audit/events?{}&actor={}",
                api_support::recent_range(),
                encode(&actor_id)
            ),
            60,
            |page| page["events"].as_array().is_some_and(|e| e.len() == 3),
        )
        .await;
    let target = &page["events"][1];
    let (partition, offset) = (
        target["archive"]["partition"].as_i64().unwrap(),
        target["archive"]["offset"].as_i64().unwrap(),
    );
    let event_id = target["event_id"].as_str().unwrap().to_owned();
    // Signed: a checkpoint covers the record, so the page shows its time and key.
    stack
        .wait_for(
            auditor,
            &format!("/v1/audit/verify?partition={partition}"),
            60,
            |report| {
                report["partitions"][0]["last_checkpoint"]["last_offset"].as_i64() >= Some(offset)
            },
        )
        .await;

    let _one = one_at_a_time().await;
    let browser = Browser::open(&stack.api, "audit").await;
    assert_eq!(browser.sign_in(auditor).await, "auditor");
    let nav = browser
        .js("return [...document.querySelectorAll('#nav a')].map(a => a.textContent);")
        .await;
    assert_eq!(nav, serde_json::json!(["Explore", "Jobs", "Audit"]));
    browser
        .goto(&format!("#/audit?range=1h&actor={}", encode(&actor_id)))
        .await;
    let summary = browser
        .wait_js(
            "the chain status",
            "const s = document.getElementById('chain-summary'); return s && s.textContent;",
            Duration::from_secs(60),
        )
        .await;
    assert!(summary.as_str().unwrap().contains("intact"), "{summary}");
    let card = format!("article.partition[data-partition='{partition}']");
    let checkpoint = browser
        .js(&format!(
            "const c = document.querySelector(\"{card} .checkpoint\"); return c && c.textContent;"
        ))
        .await;
    let checkpoint = checkpoint.as_str().expect("the last checkpoint is shown");
    assert!(checkpoint.contains("by key"), "{checkpoint}");
    browser
        .wait_js(
            "the three audit events",
            "return document.querySelectorAll('tr.event-row').length === 3;",
            Duration::from_secs(30),
        )
        .await;
    browser.js("window.scrollTo(0, 0); return true;").await;
    browser.screenshot("audit-intact").await;
    // A proof for one event comes from the API.
    browser
        .click(&format!("tr.event-row[data-event-id='{event_id}']"))
        .await;
    browser.click("tr.detail button.proof").await;
    let proof = browser
        .wait_js(
            "the proof download",
            "const n = document.querySelector('#audit-notices .notice'); return n && n.textContent;",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        proof
            .as_str()
            .unwrap()
            .contains(&format!("Proof for {event_id} downloaded")),
        "{proof}"
    );
    // An export of the partition downloads as a tar file.
    browser.click("details.export-section summary").await;
    browser
        .js(&format!(
            "document.getElementById('export-partition').value = '{partition}'; return true;"
        ))
        .await;
    browser.click("form.export button[type=submit]").await;
    let export = browser
        .wait_js(
            "the export download",
            "const n = document.querySelector('#audit-notices .notice'); return n && n.textContent.includes('Export') && n.textContent;",
            Duration::from_secs(60),
        )
        .await;
    assert!(
        export.as_str().unwrap().starts_with("Export downloaded ("),
        "{export}"
    );
    assert!(
        !export
            .as_str()
            .unwrap()
            .starts_with("Export downloaded (0 bytes"),
        "{export}"
    );

    // Tamper with one record, behind the archiver's back, as an attacker with ClickHouse
    // access would.
    let admin = stack.clickhouse.lock().unwrap().client();
    admin
        .query("ALTER TABLE ledgerline_audit.records UPDATE actor_id = 'mallory' WHERE `partition` = ? AND `offset` = ?")
        .bind(partition as i32)
        .bind(offset)
        .execute()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: u64 = admin
            .query("SELECT count() FROM system.mutations WHERE database = 'ledgerline_audit' AND table = 'records' AND is_done = 0")
            .fetch_one()
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the mutation did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .client
        .find(Locator::XPath("//button[text()='Verify again']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let problem = browser
        .wait_js(
            "the broken chain with the record named",
            &format!("const s = document.getElementById('chain-summary'); const p = document.querySelector(\"{card} .problem\"); return s && s.textContent.includes('BROKEN') && p && p.textContent;"),
            Duration::from_secs(60),
        )
        .await;
    let problem = problem.as_str().unwrap();
    assert!(problem.contains(&format!("offset {offset}")), "{problem}");
    assert!(problem.contains(&event_id), "{problem}");
    assert!(problem.contains("changed"), "{problem}");
    assert!(problem.contains("actor_id"), "{problem}");
    assert_eq!(
        browser
            .js(&format!(
                "return document.querySelector(\"{card}\").dataset.intact;"
            ))
            .await,
        Value::from("false")
    );
    browser.js("window.scrollTo(0, 0); return true;").await;
    browser.screenshot("audit-broken").await;
    browser.close().await;
}
