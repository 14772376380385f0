//! The schema registry against a real broker: every endpoint and error code of the Confluent
//! subset, id and version allocation, soft and hard deletes, compatibility levels, bad input,
//! basic auth, a restart that must serve the same state, and a replica on the leader's topic.
//! Each test runs its own registry on its own topic of the shared broker.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ledgerline_registry::{BasicAuth, Mode, RegistryConfig};
use ledgerline_tests::{names, Harness, RegistryServer};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

const REGISTRY_JSON: &str = "application/vnd.schemaregistry.v1+json";

fn start_registry() -> RegistryServer {
    RegistryServer::start(&Harness::shared().unwrap().broker.bootstrap()).unwrap()
}

/// A record schema `Event` with the given fields (JSON, comma separated).
fn record(fields: &str) -> String {
    format!(
        r#"{{"type":"record","name":"Event","namespace":"ledgerline.test","fields":[{fields}]}}"#
    )
}

const ID: &str = r#"{"name":"id","type":"string"}"#;
const N_DEFAULTED: &str = r#"{"name":"n","type":"int","default":0}"#;
const N_REQUIRED: &str = r#"{"name":"n","type":"int"}"#;
const REQ_REQUIRED: &str = r#"{"name":"req","type":"long"}"#;

/// A status and a JSON body, every answer checked for the registry's content type.
type Answer = (u16, Value);

struct Api {
    http: reqwest::Client,
    base: String,
    credentials: Option<(String, String)>,
}

impl Api {
    fn new(server: &RegistryServer) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.url(),
            credentials: None,
        }
    }

    fn with_credentials(server: &RegistryServer, username: &str, password: &str) -> Self {
        Self {
            credentials: Some((username.to_owned(), password.to_owned())),
            ..Self::new(server)
        }
    }

    /// Sends `body` as-is with `content_type` (none when `None`).
    async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some((username, password)) = &self.credentials {
            request = request.basic_auth(username, Some(password));
        }
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        assert_eq!(
            content_type.as_deref(),
            Some(REGISTRY_JSON),
            "{method} {path} answered {status} with the wrong content type"
        );
        (status, response.text().await.unwrap())
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let content_type = body.as_ref().map(|_| REGISTRY_JSON);
        let (status, text) = self
            .raw(
                method.clone(),
                path,
                content_type,
                body.map(|b| b.to_string()),
            )
            .await;
        let value = serde_json::from_str(&text).unwrap_or_else(|error| {
            panic!("{method} {path} answered {status} with non-json {text:?}: {error}")
        });
        (status, value)
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, path, None).await
    }

    async fn try_register(&self, subject: &str, schema: &str) -> Answer {
        self.post(
            &format!("/subjects/{subject}/versions"),
            json!({ "schema": schema }),
        )
        .await
    }

    /// Registers and returns the id; panics on any error.
    async fn register(&self, subject: &str, schema: &str) -> u64 {
        let (status, body) = self.try_register(subject, schema).await;
        assert_eq!(status, 200, "registering under {subject}: {body}");
        body["id"].as_u64().unwrap()
    }

    async fn set_level(&self, subject: &str, level: &str) {
        let answer = self
            .put(
                &format!("/config/{subject}"),
                json!({ "compatibility": level }),
            )
            .await;
        assert_eq!(answer, (200, json!({ "compatibility": level })));
    }
}

#[track_caller]
fn assert_error(answer: Answer, status: u16, error_code: u64) {
    let (actual_status, body) = answer;
    assert_eq!(actual_status, status, "{body}");
    assert_eq!(body["error_code"], error_code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn the_same_schema_gets_the_same_id_within_and_across_subjects() {
    let registry = start_registry();
    let api = Api::new(&registry);
    let v1 = record(ID);
    let first = api.register("orders-value", &v1).await;
    assert_eq!(first, 1);
    // Again, and again with other whitespace and key order: same id, no new version.
    assert_eq!(api.register("orders-value", &v1).await, first);
    let reordered = r#"{ "fields" : [ { "type" : "string", "name" : "id" } ],
        "namespace" : "ledgerline.test", "name" : "Event", "type" : "record" }"#;
    assert_eq!(api.register("orders-value", reordered).await, first);
    assert_eq!(
        api.get("/subjects/orders-value/versions").await,
        (200, json!([1]))
    );
    // The same schema under another subject: the same id, that subject's version 1.
    assert_eq!(api.register("payments-value", reordered).await, first);
    assert_eq!(
        api.get("/subjects/payments-value/versions/1").await,
        (
            200,
            json!({"subject": "payments-value", "id": first, "version": 1, "schema": v1})
        )
    );
    // A default, a doc or a different field order is a different schema.
    let v2 = record(&format!("{ID},{N_DEFAULTED}"));
    let second = api.register("orders-value", &v2).await;
    assert_eq!(second, 2);
    let documented = v1.replace(r#""name":"Event","#, r#""name":"Event","doc":"an event","#);
    assert_eq!(api.register("payments-value", &documented).await, 3);
    assert_eq!(
        api.get("/subjects/orders-value/versions").await,
        (200, json!([1, 2]))
    );
}

#[tokio::test]
async fn every_read_endpoint_serves_what_was_registered() {
    let registry = start_registry();
    let api = Api::new(&registry);
    assert_eq!(api.get("/schemas/types").await, (200, json!(["AVRO"])));
    assert_eq!(api.get("/").await, (200, json!({})));
    assert_eq!(api.get("/subjects").await, (200, json!([])));

    let v1 = record(ID);
    let v2 = record(&format!("{ID},{N_DEFAULTED}"));
    let id1 = api.register("ledgerline.audit-value", &v1).await;
    let id2 = api.register("ledgerline.audit-value", &v2).await;
    api.register("ledgerline.job-value", &v2).await;

    assert_eq!(
        api.get(&format!("/schemas/ids/{id1}")).await,
        (200, json!({ "schema": v1 }))
    );
    assert_eq!(
        api.get(&format!("/schemas/ids/{id2}/versions")).await,
        (
            200,
            json!([
                {"subject": "ledgerline.audit-value", "version": 2},
                {"subject": "ledgerline.job-value", "version": 1},
            ])
        )
    );
    assert_eq!(
        api.get("/subjects").await,
        (
            200,
            json!(["ledgerline.audit-value", "ledgerline.job-value"])
        )
    );
    assert_eq!(
        api.get("/subjects/ledgerline.audit-value/versions").await,
        (200, json!([1, 2]))
    );
    let latest =
        json!({"subject": "ledgerline.audit-value", "id": id2, "version": 2, "schema": v2});
    for version in ["latest", "-1", "2"] {
        assert_eq!(
            api.get(&format!(
                "/subjects/ledgerline.audit-value/versions/{version}"
            ))
            .await,
            (200, latest.clone()),
            "{version}"
        );
    }
    // The raw schema is the body itself, not wrapped.
    let (status, raw) = api
        .raw(
            Method::GET,
            "/subjects/ledgerline.audit-value/versions/1/schema",
            None,
            None,
        )
        .await;
    assert_eq!((status, raw.as_str()), (200, v1.as_str()));
    let (status, schema) = api
        .get("/subjects/ledgerline.audit-value/versions/latest/schema")
        .await;
    assert_eq!(status, 200);
    assert_eq!(schema["fields"][1]["name"], "n");

    // Lookup by schema under a subject.
    assert_eq!(
        api.post("/subjects/ledgerline.audit-value", json!({ "schema": v2 }))
            .await,
        (200, latest)
    );
    // Subjects with URL-special characters round-trip through percent-encoding.
    let id = api.register("team%2Fa%20b", &v1).await;
    assert_eq!(id, id1);
    assert_eq!(
        api.get("/subjects/team%2Fa%20b/versions/1").await.1["subject"],
        "team/a b"
    );
}

#[tokio::test]
async fn unknown_subjects_versions_ids_and_routes_get_confluents_codes() {
    let registry = start_registry();
    let api = Api::new(&registry);
    let v1 = record(ID);
    api.register("s", &v1).await;

    assert_error(api.get("/subjects/missing/versions").await, 404, 40401);
    assert_error(api.get("/subjects/missing/versions/1").await, 404, 40401);
    assert_error(
        api.get("/subjects/missing/versions/latest/schema").await,
        404,
        40401,
    );
    assert_error(
        api.post("/subjects/missing", json!({ "schema": v1 })).await,
        404,
        40401,
    );
    assert_error(api.delete("/subjects/missing").await, 404, 40401);
    assert_error(api.delete("/subjects/missing/versions/1").await, 404, 40401);

    assert_error(api.get("/subjects/s/versions/2").await, 404, 40402);
    assert_error(api.get("/subjects/s/versions/2/schema").await, 404, 40402);
    assert_error(api.delete("/subjects/s/versions/2").await, 404, 40402);

    assert_error(api.get("/schemas/ids/999").await, 404, 40403);
    assert_error(api.get("/schemas/ids/999/versions").await, 404, 40403);
    assert_error(api.get("/schemas/ids/abc").await, 404, 40403);
    assert_error(api.get("/schemas/ids/-1").await, 404, 40403);
    let other = record(&format!("{ID},{N_DEFAULTED}"));
    assert_error(
        api.post("/subjects/s", json!({ "schema": other })).await,
        404,
        40403,
    );

    for version in [
        "abc",
        "0",
        "-2",
        "2147483648",
        "99999999999999999999",
        "1.5",
    ] {
        assert_error(
            api.get(&format!("/subjects/s/versions/{version}")).await,
            422,
            42202,
        );
        assert_error(
            api.delete(&format!("/subjects/s/versions/{version}")).await,
            422,
            42202,
        );
        assert_error(
            api.post(
                &format!("/compatibility/subjects/s/versions/{version}"),
                json!({ "schema": v1 }),
            )
            .await,
            422,
            42202,
        );
    }

    let unknown_route = api.get("/no/such/route").await;
    assert_eq!(
        unknown_route,
        (
            404,
            json!({"error_code": 404, "message": "HTTP 404 Not Found"})
        )
    );
    assert_error(api.send(Method::PATCH, "/subjects", None).await, 405, 405);
}

#[tokio::test]
async fn bad_input_gets_a_confluent_error_and_never_a_500() {
    let registry = start_registry();
    let api = Api::new(&registry);
    let path = "/subjects/s/versions";

    // Not JSON at all: 400; JSON of the wrong shape: 422.
    for body in ["", "{", "not json", "{\"schema\": }"] {
        let (status, text) = api
            .raw(Method::POST, path, Some(REGISTRY_JSON), Some(body.into()))
            .await;
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_error((status, value), 400, 400);
    }
    for body in [json!([]), json!({"schema": 42}), json!("schema")] {
        assert_error(api.post(path, body).await, 422, 422);
    }
    // Valid JSON, invalid schema: 42201.
    for schema in [
        "",
        "   ",
        "{",
        r#""nosuchtype""#,
        r#"{"type":"record","name":"E"}"#,
        r#"{"type":"record","name":"E","fields":[{"name":"x","type":"Missing"}]}"#,
        r#"{"type":"enum","name":"E","symbols":["A","A"]}"#,
    ] {
        assert_error(api.try_register("s", schema).await, 422, 42201);
        assert_error(
            api.post("/subjects/s", json!({ "schema": schema })).await,
            422,
            42201,
        );
    }
    assert_error(api.post(path, json!({})).await, 422, 42201);
    assert_error(api.post(path, json!({"schema": null})).await, 422, 42201);
    let v1 = record(ID);
    for kind in ["JSON", "PROTOBUF"] {
        let answer = api
            .post(path, json!({"schema": "{}", "schemaType": kind}))
            .await;
        assert!(
            answer.1["message"]
                .as_str()
                .unwrap()
                .contains("unsupported schema type"),
            "{}",
            answer.1
        );
        assert_error(answer, 422, 42201);
    }
    let reference = json!([{"name": "x", "subject": "y", "version": 1}]);
    assert_error(
        api.post(path, json!({"schema": v1, "references": reference}))
            .await,
        422,
        42201,
    );

    // Every accepted content type works, as does none; others are refused with 415.
    let body = json!({"schema": v1, "schemaType": "AVRO", "references": []}).to_string();
    for content_type in [
        Some("application/vnd.schemaregistry.v1+json"),
        Some("application/vnd.schemaregistry+json"),
        Some("application/json; charset=utf-8"),
        None,
    ] {
        let (status, text) = api
            .raw(Method::POST, path, content_type, Some(body.clone()))
            .await;
        assert_eq!(
            (status, text.as_str()),
            (200, r#"{"id":1}"#),
            "{content_type:?}"
        );
    }
    let (status, text) = api
        .raw(Method::POST, path, Some("text/plain"), Some(body))
        .await;
    assert_error((status, serde_json::from_str(&text).unwrap()), 415, 415);

    // Config bodies.
    for body in [
        json!({"compatibility": "SIDEWAYS"}),
        json!({"compatibility": ""}),
        json!({}),
    ] {
        assert_error(api.put("/config", body.clone()).await, 422, 42203);
        assert_error(api.put("/config/s", body).await, 422, 42203);
    }
    assert_error(
        api.put("/config", json!({"compatibility": 1})).await,
        422,
        422,
    );
    // Nothing above changed anything.
    assert_eq!(api.get("/subjects/s/versions").await, (200, json!([1])));
    assert_eq!(
        api.get("/config").await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
}

#[tokio::test]
async fn soft_and_hard_deletes_follow_confluent() {
    let registry = start_registry();
    let api = Api::new(&registry);
    let v1 = record(ID);
    let v2 = record(&format!("{ID},{N_DEFAULTED}"));
    let v3 = record(&format!(
        r#"{ID},{N_DEFAULTED},{{"name":"m","type":"long","default":0}}"#
    ));
    let id1 = api.register("s", &v1).await;
    let id2 = api.register("s", &v2).await;
    let id3 = api.register("s", &v3).await;

    // A permanent delete needs a soft delete first.
    assert_error(
        api.delete("/subjects/s/versions/3?permanent=true").await,
        404,
        40407,
    );
    assert_error(api.delete("/subjects/s?permanent=true").await, 404, 40405);

    // Soft delete of the latest version: hidden, but its id still resolves.
    assert_eq!(
        api.delete("/subjects/s/versions/latest").await,
        (200, json!(3))
    );
    assert_error(api.delete("/subjects/s/versions/3").await, 404, 40406);
    assert_eq!(api.get("/subjects/s/versions").await, (200, json!([1, 2])));
    assert_eq!(
        api.get("/subjects/s/versions?deleted=true").await,
        (200, json!([1, 2, 3]))
    );
    assert_error(api.get("/subjects/s/versions/3").await, 404, 40402);
    assert_eq!(
        api.get("/subjects/s/versions/3?deleted=true").await.1["id"],
        id3
    );
    assert_eq!(api.get("/subjects/s/versions/latest").await.1["version"], 2);
    assert_eq!(
        api.get(&format!("/schemas/ids/{id3}")).await,
        (200, json!({ "schema": v3 }))
    );
    assert_eq!(
        api.get(&format!("/schemas/ids/{id3}/versions")).await,
        (200, json!([]))
    );
    assert_eq!(
        api.get(&format!("/schemas/ids/{id3}/versions?deleted=true"))
            .await,
        (200, json!([{"subject": "s", "version": 3}]))
    );
    // Hard delete of the soft-deleted version: gone, and so is its id.
    assert_eq!(
        api.delete("/subjects/s/versions/3?permanent=true").await,
        (200, json!(3))
    );
    assert_error(
        api.get("/subjects/s/versions/3?deleted=true").await,
        404,
        40402,
    );
    assert_error(api.get(&format!("/schemas/ids/{id3}")).await, 404, 40403);
    assert_error(
        api.delete("/subjects/s/versions/3?permanent=true").await,
        404,
        40402,
    );

    // Soft delete of the subject: it disappears from reads but not from `deleted=true`.
    assert_eq!(api.delete("/subjects/s").await, (200, json!([1, 2])));
    assert_error(api.get("/subjects/s/versions").await, 404, 40401);
    assert_error(api.get("/subjects/s/versions/latest").await, 404, 40401);
    assert_error(api.delete("/subjects/s").await, 404, 40404);
    assert_eq!(api.get("/subjects").await, (200, json!([])));
    assert_eq!(api.get("/subjects?deleted=true").await, (200, json!(["s"])));
    assert_eq!(
        api.get(&format!("/schemas/ids/{id1}")).await,
        (200, json!({ "schema": v1 }))
    );

    // Registering into the soft-deleted subject works, after the highest version used, and the
    // same schema keeps its id.
    assert_eq!(api.register("s", &v2).await, id2);
    assert_eq!(api.get("/subjects/s/versions").await, (200, json!([3])));
    // The schema of a hard-deleted id comes back under a new id: 3 must never be reused.
    let id_again = api.register("s", &v3).await;
    assert_eq!(id_again, id3 + 1);

    // Hard delete of the whole subject, after soft-deleting it.
    assert_eq!(api.delete("/subjects/s").await, (200, json!([3, 4])));
    assert_eq!(
        api.delete("/subjects/s?permanent=true").await,
        (200, json!([1, 2, 3, 4]))
    );
    assert_error(
        api.get("/subjects/s/versions?deleted=true").await,
        404,
        40401,
    );
    assert_error(api.delete("/subjects/s?permanent=true").await, 404, 40401);
    assert_eq!(api.get("/subjects?deleted=true").await, (200, json!([])));
    for id in [id1, id2, id3, id_again] {
        assert_error(api.get(&format!("/schemas/ids/{id}")).await, 404, 40403);
    }
    // Ids are never reused, even with every schema gone.
    assert_eq!(api.register("t", &v1).await, id_again + 1);
}

#[tokio::test]
async fn compatibility_levels_decide_what_may_be_registered() {
    let registry = start_registry();
    let api = Api::new(&registry);

    // BACKWARD, the default: a new field needs a default.
    api.register("backward", &record(ID)).await;
    api.register("backward", &record(&format!("{ID},{N_DEFAULTED}")))
        .await;
    let answer = api
        .try_register(
            "backward",
            &record(&format!("{ID},{N_DEFAULTED},{REQ_REQUIRED}")),
        )
        .await;
    let message = answer.1["message"].as_str().unwrap().to_owned();
    assert_error(answer, 409, 409);
    assert!(message.contains("'backward'"), "{message}");
    assert!(message.contains("'req'"), "{message}");
    assert!(message.contains("must have a default value"), "{message}");
    assert_eq!(
        api.get("/subjects/backward/versions").await,
        (200, json!([1, 2]))
    );

    // FORWARD: old readers must read new data; dropping a field they need without a default
    // breaks them, adding one does not.
    api.set_level("forward", "FORWARD").await;
    api.register("forward", &record(&format!("{ID},{N_REQUIRED}")))
        .await;
    assert_error(api.try_register("forward", &record(ID)).await, 409, 409);
    api.register(
        "forward",
        &record(&format!("{ID},{N_REQUIRED},{REQ_REQUIRED}")),
    )
    .await;

    // FULL: both directions.
    api.set_level("full", "FULL").await;
    api.register("full", &record(ID)).await;
    assert_error(
        api.try_register("full", &record(&format!("{ID},{REQ_REQUIRED}")))
            .await,
        409,
        409,
    );
    api.register("full", &record(&format!("{ID},{N_DEFAULTED}")))
        .await;
    assert_error(
        api.try_register("full", &record(N_DEFAULTED)).await,
        409,
        409,
    );

    // NONE: anything, even another type.
    api.set_level("none", "NONE").await;
    api.register("none", &record(ID)).await;
    api.register("none", r#""string""#).await;
    api.register("none", &record(REQ_REQUIRED)).await;
    assert_eq!(
        api.get("/subjects/none/versions").await,
        (200, json!([1, 2, 3]))
    );

    // BACKWARD_TRANSITIVE: `n` was an int in version 1, so a string `n` passes against the
    // latest version (which has no `n`) but not against version 1.
    api.set_level("transitive", "NONE").await;
    api.register("transitive", &record(&format!("{ID},{N_REQUIRED}")))
        .await;
    api.register("transitive", &record(ID)).await;
    let string_n = record(&format!(
        r#"{ID},{{"name":"n","type":"string","default":""}}"#
    ));
    api.set_level("transitive", "BACKWARD").await;
    assert_eq!(
        api.post(
            "/compatibility/subjects/transitive/versions/latest",
            json!({ "schema": string_n })
        )
        .await,
        (200, json!({"is_compatible": true}))
    );
    api.set_level("transitive", "BACKWARD_TRANSITIVE").await;
    let answer = api.try_register("transitive", &string_n).await;
    assert!(
        answer.1["message"].as_str().unwrap().contains("version 1"),
        "{}",
        answer.1
    );
    assert_error(answer, 409, 409);
    // The global level changed nothing for subjects with their own.
    assert_eq!(
        api.put("/config", json!({"compatibility": "NONE"})).await,
        (200, json!({"compatibility": "NONE"}))
    );
    assert_error(api.try_register("transitive", &string_n).await, 409, 409);
    // And applies to subjects without one.
    api.register(
        "backward",
        &record(&format!("{ID},{N_DEFAULTED},{REQ_REQUIRED}")),
    )
    .await;
}

/// FORWARD_TRANSITIVE against FORWARD on the same history, driven as Confluent's clients do
/// (`POST /compatibility/...` to check, `POST /subjects/.../versions` to register). Version 1
/// requires `n`; version 2 gives it a default, so version 1 reads version 2's data. A version 3
/// without `n` is readable by version 2 (the default fills it in) but not by version 1 (no
/// default): FORWARD, which checks the latest version only, takes it; FORWARD_TRANSITIVE, which
/// checks every version, must refuse it and name version 1.
#[tokio::test]
async fn forward_transitive_checks_every_version_and_forward_only_the_latest() {
    let registry = start_registry();
    let api = Api::new(&registry);
    let v1 = record(&format!("{ID},{N_REQUIRED}"));
    let v2 = record(&format!("{ID},{N_DEFAULTED}"));
    let v3 = record(ID);
    // Readable by every earlier version: an extra field old readers skip, `n` still written.
    let v3_compatible = record(&format!(
        r#"{ID},{N_DEFAULTED},{{"name":"m","type":"long","default":0}}"#
    ));

    for (subject, level) in [
        ("transitive", "FORWARD_TRANSITIVE"),
        ("latest-only", "FORWARD"),
    ] {
        api.set_level(subject, level).await;
        // v2 is forward compatible with v1, so both levels take it.
        api.register(subject, &v1).await;
        api.register(subject, &v2).await;
        assert_eq!(
            api.get(&format!("/subjects/{subject}/versions")).await,
            (200, json!([1, 2])),
            "{level}"
        );
    }

    // The check a client makes before registering: latest means every version when transitive.
    assert_eq!(
        api.post(
            "/compatibility/subjects/transitive/versions/latest",
            json!({ "schema": v3 })
        )
        .await,
        (200, json!({"is_compatible": false}))
    );
    assert_eq!(
        api.post(
            "/compatibility/subjects/latest-only/versions/latest",
            json!({ "schema": v3 })
        )
        .await,
        (200, json!({"is_compatible": true}))
    );

    let refused = api.try_register("transitive", &v3).await;
    let message = refused.1["message"].as_str().unwrap_or_default().to_owned();
    assert_error(refused, 409, 409);
    assert!(message.contains("version 1"), "{message}");
    assert!(
        !message.contains("version 2"),
        "version 2 reads v3: {message}"
    );
    assert!(message.contains("'n'"), "{message}");
    assert_eq!(
        api.get("/subjects/transitive/versions").await,
        (200, json!([1, 2])),
        "a refused schema registers nothing"
    );

    // FORWARD takes the same schema on the same history.
    let (status, body) = api.try_register("latest-only", &v3).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.get("/subjects/latest-only/versions/latest").await.1["version"],
        3
    );

    // FORWARD_TRANSITIVE refuses only what breaks a reader: a v3 every version reads is taken.
    let (status, body) = api.try_register("transitive", &v3_compatible).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.get("/subjects/transitive/versions").await,
        (200, json!([1, 2, 3]))
    );
    // And the level alone decided: once the subject is FORWARD, v3 goes in after v3_compatible
    // (which reads it through its defaults), though version 1 still cannot.
    api.set_level("transitive", "FORWARD").await;
    let (status, body) = api.try_register("transitive", &v3).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.get("/subjects/transitive/versions").await,
        (200, json!([1, 2, 3, 4]))
    );
}

#[tokio::test]
async fn compatibility_endpoint_checks_one_version_or_the_latest() {
    let registry = start_registry();
    let api = Api::new(&registry);
    let v1 = record(&format!("{ID},{N_REQUIRED}"));
    let v2 = record(ID);
    api.set_level("s", "NONE").await;
    api.register("s", &v1).await;
    api.register("s", &v2).await;
    api.set_level("s", "FULL_TRANSITIVE").await;

    let candidate = json!({ "schema": record(&format!(r#"{ID},{{"name":"n","type":"string","default":""}}"#)) });
    // Against version 2 alone: fine. Against latest under a transitive level: every version.
    assert_eq!(
        api.post("/compatibility/subjects/s/versions/2", candidate.clone())
            .await,
        (200, json!({"is_compatible": true}))
    );
    assert_eq!(
        api.post("/compatibility/subjects/s/versions/1", candidate.clone())
            .await,
        (200, json!({"is_compatible": false}))
    );
    let (status, verbose) = api
        .post(
            "/compatibility/subjects/s/versions/latest?verbose=true",
            candidate.clone(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(verbose["is_compatible"], false);
    let messages = verbose["messages"].as_array().unwrap();
    assert!(!messages.is_empty());
    assert!(
        messages
            .iter()
            .all(|m| m.as_str().unwrap().contains("version 1")),
        "{verbose}"
    );
    assert_eq!(
        api.post(
            "/compatibility/subjects/s/versions?verbose=true",
            candidate.clone()
        )
        .await,
        (200, verbose)
    );
    assert_eq!(
        api.post(
            "/compatibility/subjects/s/versions/2?verbose=true",
            candidate.clone()
        )
        .await,
        (200, json!({"is_compatible": true, "messages": []}))
    );
    // NONE: always compatible.
    api.set_level("s", "NONE").await;
    assert_eq!(
        api.post(
            "/compatibility/subjects/s/versions/latest",
            json!({"schema": r#""int""#})
        )
        .await,
        (200, json!({"is_compatible": true}))
    );
    // Nothing was registered by checking.
    assert_eq!(api.get("/subjects/s/versions").await, (200, json!([1, 2])));

    assert_error(
        api.post(
            "/compatibility/subjects/missing/versions/latest",
            candidate.clone(),
        )
        .await,
        404,
        40401,
    );
    assert_error(
        api.post("/compatibility/subjects/s/versions/9", candidate)
            .await,
        404,
        40402,
    );
    assert_error(
        api.post(
            "/compatibility/subjects/s/versions/latest",
            json!({"schema": "{"}),
        )
        .await,
        422,
        42201,
    );
}

#[tokio::test]
async fn config_endpoints_set_read_and_delete_levels() {
    let registry = start_registry();
    let api = Api::new(&registry);
    assert_eq!(
        api.get("/config").await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    for level in [
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
        "BACKWARD",
    ] {
        assert_eq!(
            api.put("/config", json!({ "compatibility": level })).await,
            (200, json!({ "compatibility": level }))
        );
        assert_eq!(
            api.get("/config").await,
            (200, json!({ "compatibilityLevel": level }))
        );
        api.set_level("s", level).await;
        assert_eq!(
            api.get("/config/s").await,
            (200, json!({ "compatibilityLevel": level }))
        );
    }
    api.set_level("s", "FULL").await;
    assert_error(api.get("/config/other").await, 404, 40408);
    assert_eq!(
        api.get("/config/other?defaultToGlobal=true").await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    // Deleting returns the level it had; the subject then follows the global level again.
    assert_eq!(
        api.delete("/config/s").await,
        (200, json!({"compatibilityLevel": "FULL"}))
    );
    assert_error(api.get("/config/s").await, 404, 40408);
    assert_error(api.delete("/config/s").await, 404, 40408);
    assert_eq!(
        api.put("/config", json!({"compatibilityLevel": "forward"}))
            .await,
        (200, json!({"compatibility": "FORWARD"}))
    );
    assert_eq!(
        api.get("/config/s?defaultToGlobal=true").await,
        (200, json!({"compatibilityLevel": "FORWARD"}))
    );
    assert_eq!(
        api.delete("/config").await,
        (200, json!({"compatibilityLevel": "FORWARD"}))
    );
    assert_eq!(
        api.get("/config").await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
}

#[tokio::test]
async fn basic_auth_guards_the_api_but_not_health_and_metrics() {
    let bootstrap = Harness::shared().unwrap().broker.bootstrap();
    let registry = RegistryServer::start_with(
        &bootstrap,
        RegistryConfig {
            topic: names::unique("schemas"),
            basic_auth: Some(BasicAuth {
                username: "ledgerline".to_owned(),
                password: "s3cret".into(),
            }),
            ..RegistryConfig::default()
        },
    )
    .unwrap();
    let anonymous = Api::new(&registry);
    let wrong = Api::with_credentials(&registry, "ledgerline", "guess");
    let right = Api::with_credentials(&registry, "ledgerline", "s3cret");
    for api in [&anonymous, &wrong] {
        assert_eq!(
            api.get("/subjects").await,
            (401, json!({"error_code": 401, "message": "unauthorized"}))
        );
        assert_error(api.try_register("s", &record(ID)).await, 401, 401);
        assert_error(api.get("/no/such/route").await, 401, 401);
    }
    let malformed = reqwest::Client::new()
        .get(format!("{}/subjects", registry.url()))
        .header(AUTHORIZATION, "Basic !!!")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);
    assert!(malformed.headers().contains_key("www-authenticate"));

    assert_eq!(right.register("s", &record(ID)).await, 1);
    assert_eq!(right.get("/subjects").await, (200, json!(["s"])));

    // Probes and scrapers need no secret.
    let health = reqwest::get(format!("{}/health", registry.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("{}/metrics", registry.url()))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
}

#[tokio::test]
async fn health_and_metrics_are_served_beside_the_api() {
    let registry = start_registry();
    let api = Api::new(&registry);
    api.register("s", &record(ID)).await;
    api.get("/schemas/ids/1").await;
    assert_error(api.get("/schemas/ids/77").await, 404, 40403);

    let health = reqwest::get(format!("{}/health", registry.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let report: Value = health.json().await.unwrap();
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["components"]["kafka"]["status"], "ok", "{report}");
    assert_eq!(report["components"]["store"]["status"], "ok", "{report}");

    let text = reqwest::get(format!("{}/metrics", registry.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ledgerline_registry_registrations_total",
        "ledgerline_registry_lookups_total",
        "ledgerline_registry_errors_total",
        "ledgerline_registry_log_records_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

/// Everything a client can read, keyed by the request that read it.
async fn snapshot(api: &Api) -> Vec<(String, Answer)> {
    let mut paths = vec![
        "/subjects".to_owned(),
        "/subjects?deleted=true".to_owned(),
        "/config".to_owned(),
    ];
    let (_, subjects) = api.get("/subjects?deleted=true").await;
    let mut ids = std::collections::BTreeSet::new();
    for subject in subjects.as_array().unwrap() {
        let subject = subject.as_str().unwrap();
        paths.push(format!("/subjects/{subject}/versions"));
        paths.push(format!("/config/{subject}"));
        let (_, versions) = api
            .get(&format!("/subjects/{subject}/versions?deleted=true"))
            .await;
        for version in versions.as_array().unwrap() {
            let path = format!("/subjects/{subject}/versions/{version}?deleted=true");
            ids.insert(api.get(&path).await.1["id"].as_u64().unwrap());
            paths.push(path);
        }
        paths.push(format!("/subjects/{subject}/versions/latest"));
    }
    for id in ids {
        paths.push(format!("/schemas/ids/{id}"));
        paths.push(format!("/schemas/ids/{id}/versions?deleted=true"));
    }
    let mut answers = Vec::new();
    for path in paths {
        let answer = api.get(&path).await;
        answers.push((path, answer));
    }
    answers
}

#[tokio::test]
async fn a_restarted_registry_serves_the_same_state_and_continues_ids() {
    let mut registry = start_registry();
    let api = Api::new(&registry);
    let v1 = record(ID);
    let v2 = record(&format!("{ID},{N_DEFAULTED}"));
    let v3 = record(&format!(
        r#"{ID},{N_DEFAULTED},{{"name":"m","type":"long","default":0}}"#
    ));
    api.register("audit-value", &v1).await;
    api.register("audit-value", &v2).await;
    api.register("job-value", &v2).await;
    api.set_level("job-value", "FULL_TRANSITIVE").await;
    api.put("/config", json!({"compatibility": "FORWARD"}))
        .await;
    api.set_level("audit-value", "NONE").await;
    api.register("audit-value", r#""string""#).await;
    api.delete("/subjects/audit-value/versions/1").await;
    // The highest id so far belongs to a schema that is then hard-deleted: a restart must still
    // know it was used.
    let highest = api.register("scratch-value", &v3).await;
    api.delete("/subjects/scratch-value").await;
    assert_eq!(
        api.delete("/subjects/scratch-value?permanent=true").await,
        (200, json!([1]))
    );
    let before = snapshot(&api).await;
    assert!(before.len() > 10, "{before:?}");

    let old_url = registry.url();
    registry.restart().unwrap();
    if registry.url() != old_url {
        eprintln!("registry restarted on a new port: {}", registry.url());
    }
    let api = Api::new(&registry);
    let after = snapshot(&api).await;
    assert_eq!(before, after);

    let next = api.register("fresh-value", &record(REQ_REQUIRED)).await;
    assert_eq!(next, highest + 1);
    // And re-registering a known schema still finds its id.
    assert_eq!(api.register("audit-value", &v2).await, 2);
}

#[tokio::test]
async fn a_replica_serves_the_leaders_writes_and_refuses_its_own() {
    let bootstrap = Harness::shared().unwrap().broker.bootstrap();
    let leader = start_registry();
    let replica = RegistryServer::start_with(
        &bootstrap,
        RegistryConfig {
            topic: leader.topic().to_owned(),
            mode: Mode::Replica,
            ..RegistryConfig::default()
        },
    )
    .unwrap();
    let to_leader = Api::new(&leader);
    let to_replica = Api::new(&replica);

    let v1 = record(ID);
    let id = to_leader.register("s", &v1).await;
    to_leader.set_level("s", "FULL").await;
    // The replica tails the topic: it serves the leader's writes within moments.
    let started = Instant::now();
    loop {
        let answer = to_replica.get(&format!("/schemas/ids/{id}")).await;
        if answer.0 == 200 {
            assert_eq!(answer.1, json!({ "schema": v1 }));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replica never served id {id}: {}",
            answer.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    while to_replica.get("/config/s").await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        to_replica.get("/subjects/s/versions/latest").await,
        to_leader.get("/subjects/s/versions/latest").await
    );

    // Writes that would change anything are refused, so ids come from one place only.
    let v2 = record(&format!("{ID},{N_DEFAULTED}"));
    for answer in [
        to_replica.try_register("s", &v2).await,
        to_replica.try_register("other", &v1).await,
        to_replica
            .put("/config", json!({"compatibility": "NONE"}))
            .await,
        to_replica
            .put("/config/s", json!({"compatibility": "NONE"}))
            .await,
        to_replica.delete("/config/s").await,
        to_replica.delete("/subjects/s/versions/1").await,
        to_replica.delete("/subjects/s").await,
    ] {
        assert!(
            answer.1["message"].as_str().unwrap().contains("replica"),
            "{}",
            answer.1
        );
        assert_error(answer, 503, 50003);
    }
    // Registering what is already registered changes nothing, so a replica can answer it:
    // producers pointed at a replica still start.
    assert_eq!(to_replica.register("s", &v1).await, id);
    assert_eq!(
        to_leader.get("/subjects/s/versions").await,
        (200, json!([1]))
    );
}
