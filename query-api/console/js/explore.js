// Explore: a time range, the `q` search box and quick filters, the histogram by level, the
// events table with "load more", and the live-tail switch. The whole view lives in the URL
// (#/explore?range=1h&q=…&live=1), so it can be shared.

import { get } from "./api.js";
import {
  h, levelChip, notify, showError, resolveRange, rangePicker, hashFor, isoSeconds, searchTerm, LEVELS,
} from "./dom.js";
import { drawHistogram, intervalFor } from "./histogram.js";
import { EventTable, ID_FIELDS, MAX_ROWS, timeCell } from "./events.js";
import { LiveTail } from "./tail.js";

const FILTERS = ["q", "category", "service", "level"];
const CATEGORIES = ["job", "connection", "system", "session"];

export function renderExplore(root, route, ctx) {
  const state = { range: "1h", ...route.params };
  if (state.since && state.until) delete state.range;
  const filters = Object.fromEntries(FILTERS.map((name) => [name, state[name] || ""]));
  const controller = new AbortController();
  let tail = null;
  let resize = null;

  const go = (changes) => ctx.navigate(hashFor("explore", { ...state, ...changes }));

  // The form.
  const range = resolveRange(state);
  const picker = rangePicker("", state, range);
  const q = h("input", {
    id: "q", name: "q", type: "search", value: filters.q, autocomplete: "off", spellcheck: "false",
    placeholder: 'level:error service:billing "disk full"',
  });
  const category = h(
    "select",
    { id: "category", name: "category" },
    h("option", { value: "", text: "Any" }),
    CATEGORIES.map((value) => h("option", { value, text: value, selected: filters.category === value })),
  );
  const services = h("datalist", { id: "services" });
  const service = h("input", { id: "service", name: "service", value: filters.service, list: "services", autocomplete: "off", size: "14" });
  const level = h(
    "select",
    { id: "level", name: "level" },
    h("option", { value: "", text: "Any" }),
    LEVELS.slice(1).map((value) => h("option", { value, text: `${value} and up`, selected: filters.level === value })),
  );
  const liveSwitch = h("input", { id: "live", type: "checkbox", role: "switch", checked: state.live === "1" });
  const pause = h("button", { id: "pause", type: "button", class: "secondary", hidden: state.live !== "1", "aria-pressed": "false", text: "Pause" });
  const liveStatus = h("span", { id: "live-status", class: "live-status", "aria-live": "polite" });

  const form = h(
    "form",
    { class: "toolbar", role: "search", "aria-label": "Search events" },
    picker.elements,
    h("label", { for: "q", class: "grow" }, "Search ", q),
    h("label", { for: "category" }, "Category ", category),
    h("label", { for: "service" }, "Service ", service),
    services,
    h("label", { for: "level" }, "Level ", level),
    h("button", { type: "submit", text: "Search" }),
    h("label", { for: "live", class: "switch" }, liveSwitch, " Live tail"),
    pause,
    liveStatus,
  );
  const formState = () => {
    const next = { q: q.value.trim(), category: category.value, service: service.value.trim(), level: level.value, live: liveSwitch.checked ? "1" : "" };
    return { ...next, ...picker.value() };
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = formState();
    if (next.error) return notify(notices, "error", next.error);
    // The same URL again still searches again (a relative range moves on).
    const hash = hashFor("explore", next);
    if (hash === location.hash) ctx.rerender();
    else ctx.navigate(hash);
  });
  liveSwitch.addEventListener("change", () => {
    const next = formState();
    if (!next.error) go(next);
  });

  const notices = h("div", { class: "notices", id: "explore-notices" });
  const histogramHost = h("div", { class: "histogram-host", id: "histogram" }, h("p", { class: "muted", text: "Loading…" }));
  const summary = h("p", { class: "summary", id: "summary" });
  const table = new EventTable({
    caption: "Events, newest first",
    columns: [
      { title: "Time", class: "col-time", cell: timeCell },
      { title: "Level", class: "col-level", cell: (e) => levelChip(e.level) },
      { title: "Category", class: "col-category", cell: (e) => e.category },
      { title: "Service", class: "col-service", cell: (e) => e.service },
      { title: "Name", class: "col-name", cell: (e) => h("span", { class: "event-name", text: e.name }) },
      { title: "Message", class: "col-message", cell: (e) => h("span", { title: e.message, text: e.message }) },
    ],
    linkFor: (field, value) =>
      ID_FIELDS.includes(field)
        ? hashFor("explore", { ...state, q: [filters.q, searchTerm(field, value)].filter(Boolean).join(" ") })
        : null,
    actions: (event) => [
      event.job_id ? h("a", { href: `#/jobs/${encodeURIComponent(event.job_id)}`, text: "Open job" }) : null,
      h("a", { href: hashFor("explore", { ...state, q: searchTerm("trace_id", event.trace_id) }), hidden: !event.trace_id, text: "Same trace" }),
    ],
  });
  const more = h("button", { type: "button", class: "secondary", id: "load-more", hidden: true, text: "Load more" });
  const results = h("section", { class: "results", "aria-label": "Events" }, table.scroller, h("div", { class: "more" }, more));
  // Which view the table shows, once its search is done (scripts and tests can wait on it).
  const view = location.hash;

  root.replaceChildren(
    h("h1", { class: "visually-hidden", text: "Explore" }),
    form,
    notices,
    h("section", { class: "histogram", "aria-label": "Events over time by level" }, histogramHost,
      h("div", { class: "legend", "aria-hidden": "true" }, LEVELS.map((l) => h("span", {}, h("i", { class: `swatch bar-${l.toLowerCase()}` }), l))),
      summary),
    results,
  );

  const params = { since: range.since, until: range.until, ...filters };
  let cursor = null;
  const showPage = (page) => {
    table.add(page.events);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    if (cursor && table.searched >= MAX_ROWS) {
      // The table stops growing here; the rest is a narrower search away.
      more.hidden = true;
      notify(notices, "warn", `The table holds the newest ${MAX_ROWS.toLocaleString()} results; narrow the range or the search to see older ones.`);
    }
    if (!table.size) table.body.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "6", text: "No events match in this range." })));
  };
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      showPage(await get("/v1/events", { ...params, cursor, limit: 100 }, { signal: controller.signal }));
    } catch (error) {
      if (error.name !== "AbortError") showError(notices, error);
    } finally {
      more.disabled = false;
    }
  });

  (async () => {
    const interval = intervalFor(range.sinceMs, range.untilMs);
    const signal = controller.signal;
    const [page, histogram, top] = await Promise.allSettled([
      get("/v1/events", { ...params, limit: 100 }, { signal }),
      get("/v1/stats/histogram", { ...params, interval, by: "level" }, { signal }),
      get("/v1/stats/top", { since: range.since, until: range.until, field: "service", limit: 50 }, { signal }),
    ]);
    if (signal.aborted) return;
    if (page.status === "fulfilled") {
      showPage(page.value);
      results.dataset.searchedFor = view;
    }
    else {
      // Live rows may already be in the table; only an empty one says the search failed.
      if (!table.size) table.body.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "6", text: "The search failed; see the message above." })));
      showError(notices, page.reason);
    }
    if (histogram.status === "fulfilled") {
      const draw = () => drawHistogram(histogramHost, histogram.value, range, (from, to) =>
        go({ range: "", since: isoSeconds(new Date(from)), until: isoSeconds(new Date(to)) }));
      const total = draw();
      let width = histogramHost.clientWidth;
      resize = new ResizeObserver(() => {
        if (histogramHost.clientWidth !== width) {
          width = histogramHost.clientWidth;
          draw();
        }
      });
      resize.observe(histogramHost);
      histogramHost.dataset.since = range.since;
      histogramHost.dataset.until = range.until;
      histogramHost.dataset.total = String(total);
      summary.textContent = `${total.toLocaleString()} events from ${new Date(range.sinceMs).toLocaleString()} to ${new Date(range.untilMs).toLocaleString()}. Drag across the chart to zoom.`;
    } else {
      histogramHost.replaceChildren(h("p", { class: "muted", text: "No histogram." }));
      if (page.status === "fulfilled") showError(notices, histogram.reason);
    }
    if (top.status === "fulfilled") {
      services.replaceChildren(...top.value.entries.map((row) => h("option", { value: row.value })));
    }
  })();

  if (state.live === "1") {
    // Live events are drawn once per frame, not one by one, so a burst costs one layout; a
    // hidden tab (no frames) keeps only the newest MAX_ROWS, which is all the table holds.
    let pending = [];
    let frame = 0;
    const flush = () => {
      frame = 0;
      const batch = pending;
      pending = [];
      const empty = table.body.querySelector("tr.empty");
      if (empty) empty.remove();
      table.add(batch, { top: true, live: true });
    };
    tail = new LiveTail({
      // Explore never shows audit events (its searches cannot), so the tail asks for the
      // other categories when none is chosen; an auditor's tail is then no audit watch.
      params: { ...filters, category: filters.category || "job,connection,system,session" },
      // A relative range was just searched up to now: start the tail a little before the
      // search, so an event stored between the search and the subscription is not missed
      // (the table skips the ones it already has). A custom range is history: tail from now.
      since: state.range ? new Date(Date.now() - 10_000).toISOString() : undefined,
      onEvent: (event) => {
        pending.push(event);
        if (pending.length > MAX_ROWS) pending.splice(0, pending.length - MAX_ROWS);
        if (!frame) frame = requestAnimationFrame(flush);
      },
      onNotice: (kind, text) => notify(notices, kind, text),
      onState: (now) => {
        liveStatus.textContent = { connecting: "connecting…", "catching-up": "catching up…", live: "● live", paused: "paused", reconnecting: "reconnecting…", failed: "stopped", stopped: "" }[now] || now;
        liveStatus.dataset.state = now;
      },
    });
    tail.start();
    pause.addEventListener("click", () => {
      if (tail.state === "paused") {
        tail.resume();
        notices.replaceChildren();
        pause.textContent = "Pause";
        pause.setAttribute("aria-pressed", "false");
      } else {
        tail.pause();
        notify(notices, "warn", "Paused: new events are not shown. Resume continues from where the tail stopped, with nothing missed.");
        pause.textContent = "Resume";
        pause.setAttribute("aria-pressed", "true");
      }
    });
  }

  return () => {
    controller.abort();
    if (tail) tail.stop();
    if (resize) resize.disconnect();
  };
}
