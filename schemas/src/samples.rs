//! Fully populated example events, one per category: every optional field set, so tests that
//! round-trip them cover every field. Used by tests across the workspace and by demos.

use std::collections::BTreeMap;

use crate::event::*;
use crate::Category;

/// An envelope with every field set. `n` varies ids and text so events differ.
pub fn envelope(category: Category, name: &str, n: u64) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::now_v7(),
        // 2026-11-22T00:00:00Z plus n milliseconds, in microseconds.
        occurred_at: 1_795_305_600_000_000 + (n as i64) * 1_000,
        category,
        name: name.to_owned(),
        level: Level::Info,
        service: "sample-service".to_owned(),
        service_version: "1.2.3".to_owned(),
        host: "host-1".to_owned(),
        message: format!("sample {name} number {n}"),
        trace_id: Some(format!("{:032x}", n + 1)),
        span_id: Some(format!("{:016x}", n + 1)),
        request_id: Some(format!("req-{n}")),
        attributes: BTreeMap::from([
            ("user_id".to_owned(), format!("user-{}", n % 7)),
            ("tenant".to_owned(), "acme".to_owned()),
        ]),
    }
}

pub fn audit(n: u64) -> AuditEvent {
    AuditEvent {
        envelope: envelope(Category::Audit, "user.login.success", n),
        actor: Actor {
            id: format!("user-{}", n % 7),
            kind: "user".to_owned(),
            ip: "192.0.2.10".to_owned(),
            user_agent: Some("curl/8.5".to_owned()),
        },
        action: "login".to_owned(),
        target: Some(Target {
            kind: "session".to_owned(),
            id: format!("session-{n}"),
        }),
        outcome: Outcome::Success,
        reason: Some("password and totp accepted".to_owned()),
        details: r#"{"method":"password+totp"}"#.to_owned(),
    }
}

pub fn job(n: u64) -> JobEvent {
    JobEvent {
        envelope: envelope(Category::Job, "job.progress", n),
        job_id: format!("job-{}", n % 11),
        job_type: "backup".to_owned(),
        job_name: "nightly config backup".to_owned(),
        status: JobStatus::Running,
        progress: (n % 101) as i32,
        details: r#"{"devices_done":3}"#.to_owned(),
        parent_job_id: Some("job-parent".to_owned()),
    }
}

pub fn connection(n: u64) -> ConnectionEvent {
    ConnectionEvent {
        envelope: envelope(Category::Connection, "device.connect", n),
        device_id: format!("device-{}", n % 13),
        device_name: "core router".to_owned(),
        job_id: Some(format!("job-{}", n % 11)),
        phase: ConnectionPhase::Authenticate,
        outcome: Outcome::Failure,
        duration_ms: Some(42),
        error: Some("authentication failed".to_owned()),
    }
}

pub fn system(n: u64) -> SystemEvent {
    SystemEvent {
        envelope: envelope(Category::System, "system.log", n),
        target: "netraven::worker".to_owned(),
        file: Some("src/worker.rs".to_owned()),
        line: Some(120),
        fields: BTreeMap::from([("attempt".to_owned(), "2".to_owned())]),
        error: Some(ErrorInfo {
            message: "connection reset".to_owned(),
            chain: vec!["io error".to_owned(), "broken pipe".to_owned()],
        }),
    }
}

pub fn session(n: u64) -> SessionEvent {
    SessionEvent {
        envelope: envelope(Category::Session, "session.output", n),
        device_id: format!("device-{}", n % 13),
        job_id: Some(format!("job-{}", n % 11)),
        direction: Direction::Output,
        data: "show running-config\r\n".to_owned(),
    }
}

/// One fully populated event of `category`.
pub fn event(category: Category, n: u64) -> Event {
    match category {
        Category::Audit => Event::Audit(audit(n)),
        Category::Job => Event::Job(job(n)),
        Category::Connection => Event::Connection(connection(n)),
        Category::System => Event::System(system(n)),
        Category::Session => Event::Session(session(n)),
    }
}
