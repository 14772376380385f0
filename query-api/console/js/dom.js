// Small DOM and formatting helpers. Text from events always goes in through textContent
// (never innerHTML): events carry whatever a service wrote, hostile strings included.

/** h("tr", {class: "x", onclick: f, dataset: {id: 1}}, child, "text", [more]) */
export function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const SVG = "http://www.w3.org/2000/svg";
export function svg(tag, attrs, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value);
  }
  append(element, children);
  return element;
}

export const LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"];

export function levelChip(level) {
  const known = LEVELS.includes(level) ? level.toLowerCase() : "unknown";
  return h("span", { class: `level level-${known}`, text: level || "?" });
}

export function statusChip(status) {
  return h("span", { class: `status status-${String(status || "").toLowerCase()}`, text: status || "?" });
}

/** A progress bar a screen reader can read: role=progressbar with its value. */
export function progressBar(percent, label, status) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  // Through the CSSOM: the Content-Security-Policy (style-src 'self') refuses style
  // attributes, but not styles set from a script.
  const fill = h("div", { class: "progress-fill" });
  fill.style.width = `${value}%`;
  return h(
    "div",
    {
      class: `progress progress-${String(status || "").toLowerCase()}`,
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": String(value),
      "aria-label": label,
    },
    fill,
    h("span", { class: "progress-text", text: `${value} %` }),
  );
}

/** Local time with milliseconds, for tables; the full RFC 3339 value is the title. */
export function time(rfc3339, micros) {
  const date = micros !== undefined ? new Date(micros / 1000) : new Date(rfc3339);
  if (Number.isNaN(date.getTime())) return h("time", { text: rfc3339 || "" });
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const text = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  return h("time", { datetime: rfc3339 || date.toISOString(), title: rfc3339 || date.toISOString(), text });
}

export function isoSeconds(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** `<input type=datetime-local>` value (local time) for a Date, and back. */
export function toLocalInput(date) {
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60_000);
  return shifted.toISOString().slice(0, 19);
}
export function fromLocalInput(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** The relative ranges of the picker, in seconds. */
export const RANGES = { "15m": 900, "1h": 3600, "24h": 86400, "7d": 604800 };
export const RANGE_LABELS = { "15m": "Last 15 minutes", "1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days" };

/**
 * The absolute range a view shows: `range` (relative to now) or `since` and `until`. It is
 * resolved once per search, so "load more" pages through the same range the cursor was
 * made for.
 */
export function resolveRange(state) {
  if (state.since && state.until) {
    const since = new Date(state.since);
    const until = new Date(state.until);
    if (!Number.isNaN(since.getTime()) && !Number.isNaN(until.getTime())) {
      return { since: isoSeconds(since), until: isoSeconds(until), sinceMs: since.getTime(), untilMs: until.getTime() };
    }
  }
  const seconds = RANGES[state.range] || RANGES["1h"];
  // Whole seconds, and `until` a second ahead so an event from this very second is in.
  const until = new Date(Math.ceil(Date.now() / 1000) * 1000 + 1000);
  const since = new Date(until.getTime() - seconds * 1000);
  return { since: isoSeconds(since), until: isoSeconds(until), sinceMs: since.getTime(), untilMs: until.getTime() };
}

/**
 * The time-range picker of Explore and Audit: a select of the relative ranges and "Custom
 * range", with From/To inputs shown for the custom one. `value()` is what goes in the URL:
 * {range} or {since, until} (the other keys emptied), or {error}.
 */
export function rangePicker(prefix, state, range) {
  const id = (name) => (prefix ? `${prefix}-${name}` : name);
  const select = h(
    "select",
    { id: id("range"), name: "range" },
    Object.entries(RANGE_LABELS).map(([value, text]) => h("option", { value, text, selected: state.range === value })),
    h("option", { value: "custom", text: "Custom range", selected: !state.range }),
  );
  const since = h("input", { id: id("since"), type: "datetime-local", step: "1", value: toLocalInput(new Date(range.sinceMs)) });
  const until = h("input", { id: id("until"), type: "datetime-local", step: "1", value: toLocalInput(new Date(range.untilMs)) });
  const custom = h(
    "span",
    { class: "custom-range", hidden: !!state.range },
    h("label", { for: id("since") }, "From ", since),
    h("label", { for: id("until") }, "To ", until),
  );
  select.addEventListener("change", () => {
    custom.hidden = select.value !== "custom";
  });
  return {
    elements: [h("label", { for: id("range") }, "Range ", select), custom],
    value() {
      if (select.value !== "custom") return { range: select.value, since: "", until: "" };
      const from = fromLocalInput(since.value);
      const to = fromLocalInput(until.value);
      if (!from || !to) return { error: "Give both ends of the custom range." };
      return { range: "", since: isoSeconds(from), until: isoSeconds(to) };
    },
  };
}

/** Parses `#/page/rest?query` into {path: ["page", "rest"], params}. */
export function parseHash(hash) {
  const text = (hash || "").replace(/^#/, "");
  const [path, query] = text.split("?", 2);
  return {
    path: path.split("/").filter(Boolean).map((part) => {
      try {
        return decodeURIComponent(part);
      } catch {
        return part;
      }
    }),
    params: Object.fromEntries(new URLSearchParams(query || "")),
  };
}

export function hashFor(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const text = query.toString();
  return `#/${path}${text ? `?${text}` : ""}`;
}

/** A notice line in a page's fixed-height notice area (so it never moves the page). */
export function notify(area, kind, text) {
  area.replaceChildren(h("p", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status", text }));
}

/** Shows an API error with its code and message, never a blank page. */
export function showError(area, error) {
  const text = error && error.code ? `${error.code}: ${error.message}` : `Something went wrong: ${error}`;
  notify(area, "error", text);
}

/** A quoted search-string value when it needs quoting (`job_id:"a b"`). */
export function searchTerm(field, value) {
  const text = String(value);
  return /^[A-Za-z0-9_.\/-]+$/.test(text) ? `${field}:${text}` : `${field}:"${text.replace(/["\\]/g, "\\$&")}"`;
}
