// Jobs: the latest state of every job by status, with progress bars, refreshed every few
// seconds; and one job's page, its timeline of job and connection events, kept current by a
// live tail on `job_id` that starts a minute before the page was read, so nothing between
// the read and the subscription is missed (events are matched by id, so none shows twice).

import { get } from "./api.js";
import { h, notify, showError, statusChip, progressBar, time, hashFor } from "./dom.js";
import { LiveTail } from "./tail.js";

const STATUSES = ["running", "queued", "failed", "completed", "cancelled"];
const REFRESH_MS = 3000;

export function renderJobs(root, route, ctx) {
  if (route.path.length > 1) return renderJob(root, route.path[1], ctx);
  const status = STATUSES.includes(route.params.status) ? route.params.status : "";
  const notices = h("div", { class: "notices" });
  const body = h("tbody", {}, h("tr", { class: "empty" }, h("td", { colspan: "6", text: "Loading…" })));
  const tabs = h(
    "nav",
    { class: "tabs", "aria-label": "Job status" },
    [["", "All"], ...STATUSES.map((s) => [s, s[0].toUpperCase() + s.slice(1)])].map(([value, text]) =>
      h("a", { href: hashFor("jobs", { status: value }), "aria-current": value === status ? "page" : null, text }),
    ),
  );
  root.replaceChildren(
    h("h1", { text: "Jobs" }),
    tabs,
    notices,
    h(
      "div",
      { class: "table-scroll" },
      h(
        "table",
        { class: "jobs" },
        h("caption", { class: "visually-hidden", text: "Jobs by latest status" }),
        h("colgroup", {}, ["col-job", "col-type", "col-status", "col-progress", "col-service", "col-time"].map((c) => h("col", { class: c }))),
        h("thead", {}, h("tr", {}, ["Job", "Type", "Status", "Progress", "Service", "Updated"].map((t) => h("th", { scope: "col", text: t })))),
        body,
      ),
    ),
  );
  const controller = new AbortController();
  let timer = null;
  const load = async () => {
    // Rebuilding the rows under someone tabbing through them would lose their place: skip a
    // round while the focus is in the table.
    if (body.contains(document.activeElement)) {
      timer = setTimeout(load, REFRESH_MS);
      return;
    }
    try {
      const answer = await get("/v1/jobs", { status, limit: 200 }, { signal: controller.signal });
      body.replaceChildren(
        ...answer.jobs.map((job) =>
          h(
            "tr",
            { dataset: { jobId: job.job_id } },
            h("td", { class: "col-job" }, h("a", { href: `#/jobs/${encodeURIComponent(job.job_id)}`, text: job.job_name || job.job_id }), h("div", { class: "muted small", text: job.job_id })),
            h("td", { text: job.job_type }),
            h("td", {}, statusChip(job.status)),
            h("td", {}, progressBar(job.progress, `Progress of ${job.job_name || job.job_id}`, job.status)),
            h("td", { text: job.service }),
            h("td", {}, time(job.updated_at, job.updated_at_us)),
          ),
        ),
      );
      if (!answer.jobs.length) body.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "6", text: "No jobs." })));
      notices.replaceChildren();
    } catch (error) {
      if (error.name === "AbortError") return;
      showError(notices, error);
    }
    if (!controller.signal.aborted) timer = setTimeout(load, REFRESH_MS);
  };
  load();
  return () => {
    controller.abort();
    clearTimeout(timer);
  };
}

function renderJob(root, jobId, ctx) {
  const notices = h("div", { class: "notices" });
  const header = h("div", { class: "job-header" }, h("p", { class: "muted", text: "Loading…" }));
  const body = h("tbody");
  const liveStatus = h("span", { class: "live-status", "aria-live": "polite" });
  root.replaceChildren(
    h("p", {}, h("a", { href: "#/jobs", text: "← All jobs" })),
    h("h1", { text: `Job ${jobId}` }),
    header,
    notices,
    h("h2", {}, "Timeline ", liveStatus),
    h(
      "div",
      { class: "table-scroll" },
      h(
        "table",
        { class: "timeline" },
        h("caption", { class: "visually-hidden", text: "The job's job and connection events, oldest first" }),
        h("colgroup", {}, ["col-time", "col-category", "col-name", "col-status", "col-progress-num", "col-message"].map((c) => h("col", { class: c }))),
        h("thead", {}, h("tr", {}, ["Time", "Category", "Event", "Status / phase", "Progress", "Message"].map((t) => h("th", { scope: "col", text: t })))),
        body,
      ),
    ),
  );
  const seen = new Set();
  let job = null;
  const draw = () => {
    if (!job) return;
    header.replaceChildren(
      h("dl", { class: "job-facts" },
        h("dt", { text: "Name" }), h("dd", { text: job.job_name || "—" }),
        h("dt", { text: "Type" }), h("dd", { text: job.job_type || "—" }),
        h("dt", { text: "Status" }), h("dd", {}, statusChip(job.status)),
        h("dt", { text: "Service" }), h("dd", { text: job.service || "—" }),
        h("dt", { text: "Updated" }), h("dd", {}, time(job.updated_at, job.updated_at_us)),
      ),
      progressBar(job.progress, `Progress of job ${jobId}`, job.status),
      h("p", {}, h("a", { href: hashFor("explore", { range: "7d", q: `job_id:"${jobId.replace(/["\\]/g, "\\$&")}"` }), text: "Search this job's events" })),
    );
  };
  const addEvent = (event) => {
    if (seen.has(event.event_id)) return;
    seen.add(event.event_id);
    const row = h(
      "tr",
      { dataset: { eventId: event.event_id, at: String(event.occurred_at_us) } },
      h("td", {}, time(event.occurred_at, event.occurred_at_us)),
      h("td", { text: event.category }),
      h("td", { text: event.name }),
      h("td", { text: event.status || event.phase || "" }),
      h("td", { text: event.category === "job" ? `${event.progress} %` : "" }),
      h("td", { title: event.message || "", text: event.message || "" }),
    );
    // Oldest first: events usually arrive in order, so look from the end.
    let before = body.lastElementChild;
    while (before && Number(before.dataset.at) > event.occurred_at_us) before = before.previousElementSibling;
    if (before) before.after(row);
    else body.prepend(row);
    // The state is the newest job event's (the projection's rule: latest by occurred_at).
    if (event.category === "job" && (!job || event.occurred_at_us >= job.updated_at_us)) {
      job = {
        ...(job || {}),
        job_id: event.job_id, job_name: event.job_name, job_type: event.job_type, status: event.status,
        progress: event.progress, service: event.service, updated_at: event.occurred_at, updated_at_us: event.occurred_at_us,
      };
      draw();
    }
  };
  const controller = new AbortController();
  let tail = null;
  const openedAt = Date.now();
  (async () => {
    try {
      const detail = await get(`/v1/jobs/${encodeURIComponent(jobId)}`, { limit: 10000 }, { signal: controller.signal });
      job = detail.job;
      draw();
      detail.timeline.forEach(addEvent);
      if (detail.timeline_truncated) notify(notices, "warn", "This job has more events than the timeline shows (the oldest 10,000 are here).");
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error.status !== 404) return showError(notices, error);
      // Not stored yet: the live tail below may still bring its first events.
      header.replaceChildren(h("p", { class: "muted", text: "No events for this job yet; waiting for them live." }));
    }
    if (controller.signal.aborted) return;
    tail = new LiveTail({
      // The timeline is job and connection events (session lines carry job ids too).
      params: { job_id: jobId, category: "job,connection" },
      since: new Date(openedAt - 60_000).toISOString(),
      onEvent: addEvent,
      onNotice: (kind, text) => notify(notices, kind, text),
      onState: (state) => {
        liveStatus.textContent = { connecting: "connecting…", "catching-up": "catching up…", live: "● live", reconnecting: "reconnecting…", failed: "stopped", stopped: "" }[state] || state;
        liveStatus.dataset.state = state;
      },
    });
    tail.start();
  })();
  return () => {
    controller.abort();
    if (tail) tail.stop();
  };
}
