//! `/v1/jobs` and `/v1/jobs/{job_id}`: each job's latest status and progress (from
//! `job_status`), and one job's timeline of job and connection events.

use axum::extract::{RawQuery, State};
use axum::Json;
use ledgerline_consumers::projector::queries::JobState;
use ledgerline_schemas::event::JobStatus;
use ledgerline_schemas::json::event_json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, ErrorBody, PathParam};
use crate::params::{self, Params};
use crate::state::{AppState, Authenticated};

/// The longest job id accepted in a path.
const MAX_JOB_ID_LEN: usize = 512;
/// The most timeline events one answer holds.
const MAX_TIMELINE: u64 = 10_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    pub job_id: String,
    pub job_type: String,
    pub job_name: String,
    /// QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED.
    pub status: String,
    /// Percent, 0 to 100.
    pub progress: i32,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub service: String,
    /// The event that set this state.
    pub event_id: String,
    /// When that event occurred, RFC 3339.
    pub updated_at: String,
    pub updated_at_us: i64,
}

impl From<JobState> for Job {
    fn from(state: JobState) -> Self {
        Self {
            job_id: state.job_id,
            job_type: state.job_type,
            job_name: state.job_name,
            status: state.status.as_str().to_owned(),
            progress: state.progress,
            details: state.details,
            service: state.service,
            event_id: state.event_id,
            updated_at: params::format_time(state.updated_at_us),
            updated_at_us: state.updated_at_us,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct JobListParams {
    /// Only jobs whose latest status is this: queued, running, completed, failed, cancelled.
    status: Option<String>,
    /// How many, 1 to 1000 (default 100).
    limit: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(JobListParams),
    responses(
        (status = 200, body = JobList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    _who: Authenticated,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<JobList>> {
    let limits = &state.inner.limits;
    let mut params = Params::parse(raw.as_deref())?;
    let status = match params.one("status")? {
        None => None,
        Some(text) => Some(
            text.to_ascii_uppercase()
                .parse::<JobStatus>()
                .map_err(|_| {
                    ApiError::bad_parameter(
                        "status",
                        "must be one of queued, running, completed, failed, cancelled",
                    )
                })?,
        ),
    };
    let limit = params.number("limit", limits.default_page, limits.max_page)?;
    params.finish()?;
    let jobs = state
        .inner
        .events
        .jobs(status, limit)
        .await
        .map_err(|error| ApiError::from_clickhouse("job list", &error))?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().map(Job::from).collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    pub job: Job,
    /// The job's job and connection events, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub timeline: Vec<serde_json::Value>,
    /// The job has more events than `limit`; the timeline holds the oldest `limit`.
    pub timeline_truncated: bool,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct JobParams {
    /// Timeline events, 1 to 10000 (default 1000).
    limit: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}",
    tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id"), JobParams),
    responses(
        (status = 200, body = JobDetail),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    _who: Authenticated,
    PathParam(job_id): PathParam,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<JobDetail>> {
    let mut params = Params::parse(raw.as_deref())?;
    let limit = params.number("limit", 1_000, MAX_TIMELINE)?;
    params.finish()?;
    if job_id.is_empty() || job_id.len() > MAX_JOB_ID_LEN {
        return Err(ApiError::bad_parameter(
            "job_id",
            format!("must be 1 to {MAX_JOB_ID_LEN} bytes"),
        ));
    }
    let reader = &state.inner.events;
    let (job, mut timeline) =
        tokio::try_join!(reader.job(&job_id), reader.job_timeline(&job_id, limit + 1))
            .map_err(|error| ApiError::from_clickhouse("job lookup", &error))?;
    let Some(job) = job else {
        return Err(ApiError::not_found(format!(
            "no job has id `{}`",
            job_id.escape_debug()
        )));
    };
    let timeline_truncated = timeline.len() as u64 > limit;
    timeline.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Json(JobDetail {
        job: job.into(),
        timeline: timeline.iter().map(event_json).collect(),
        timeline_truncated,
    }))
}
