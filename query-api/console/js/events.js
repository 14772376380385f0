// The events table shared by Explore and Audit: fixed columns (so rows streaming in never
// move the layout), rows that open into every field with the ids as filter links, and a
// cap on rows so a long live tail does not grow the page without bound.

import { h, time } from "./dom.js";

export const MAX_ROWS = 2000;

/** Fields whose values filter the view when clicked (the search fields of `q`). */
export const ID_FIELDS = ["job_id", "device_id", "request_id", "trace_id", "user_id"];

/**
 * columns: [{title, class, cell(event) -> Node|string}]; linkFor(field, value) -> href or
 * null; actions(event) -> extra nodes for the detail row.
 */
export class EventTable {
  constructor({ columns, linkFor, actions, caption }) {
    this.columns = columns;
    this.linkFor = linkFor || (() => null);
    this.actions = actions || (() => []);
    this.ids = new Set();
    this.live = 0;
    this.body = h("tbody");
    this.table = h(
      "table",
      { class: "events" },
      caption ? h("caption", { class: "visually-hidden", text: caption }) : null,
      h("colgroup", {}, columns.map((column) => h("col", { class: column.class }))),
      h("thead", {}, h("tr", {}, columns.map((column) => h("th", { scope: "col", class: column.class, text: column.title })))),
      this.body,
    );
    this.scroller = h("div", { class: "table-scroll" }, this.table);
  }

  clear() {
    this.ids.clear();
    this.live = 0;
    this.body.replaceChildren();
  }

  get size() {
    return this.ids.size;
  }

  /** Rows from searches ("load more" pages), not from the live tail. */
  get searched() {
    return this.ids.size - this.live;
  }

  /** Adds events at the bottom (a search page) or the top (live); repeats are skipped. */
  add(events, { top = false, live = false } = {}) {
    const rows = [];
    for (const event of events) {
      if (!event || this.ids.has(event.event_id)) continue;
      this.ids.add(event.event_id);
      rows.push(this.row(event, live));
    }
    if (top) {
      // Someone reading further down keeps their place: the rows added above push the
      // scroll position down by exactly their height (done here rather than by the
      // browser's scroll anchoring, which does not anchor table rows).
      const box = this.scroller;
      const reading = box.scrollTop > 0;
      const before = box.scrollHeight;
      this.body.prepend(...rows.reverse());
      if (reading) box.scrollTop += box.scrollHeight - before;
    } else this.body.append(...rows);
    // A long tail keeps its newest MAX_ROWS live rows: the oldest live row goes, with its
    // open detail row. Search rows are never trimmed (pages are bounded by the caller), so
    // "load more" never leaves a hole.
    if (live) this.live += rows.length;
    while (this.live > MAX_ROWS) {
      const liveRows = this.body.querySelectorAll("tr.event-row.live");
      const oldest = liveRows[liveRows.length - 1];
      if (!oldest) break;
      const next = oldest.nextElementSibling;
      if (next && next.classList.contains("detail")) next.remove();
      this.ids.delete(oldest.dataset.eventId);
      oldest.remove();
      this.live -= 1;
    }
    return rows.length;
  }

  row(event, live) {
    const row = h(
      "tr",
      {
        class: live ? "event-row live" : "event-row",
        tabindex: "0",
        "aria-expanded": "false",
        dataset: { eventId: event.event_id, name: event.name || "" },
        onclick: (click) => {
          if (click.target.closest("a, button")) return;
          this.toggle(row, event);
        },
        onkeydown: (key) => {
          if ((key.key === "Enter" || key.key === " ") && key.target === row) {
            key.preventDefault();
            this.toggle(row, event);
          }
        },
      },
      this.columns.map((column) => h("td", { class: column.class }, column.cell(event))),
    );
    return row;
  }

  toggle(row, event) {
    const open = row.getAttribute("aria-expanded") === "true";
    if (open) {
      if (row.nextElementSibling && row.nextElementSibling.classList.contains("detail")) row.nextElementSibling.remove();
      row.setAttribute("aria-expanded", "false");
      return;
    }
    row.setAttribute("aria-expanded", "true");
    row.after(h("tr", { class: "detail" }, h("td", { colspan: String(this.columns.length) }, this.detail(event))));
  }

  detail(event) {
    const list = h("dl", { class: "fields" });
    const nested = [];
    for (const [field, value] of Object.entries(event)) {
      if (value !== null && typeof value === "object") {
        nested.push([field, value]);
        continue;
      }
      list.append(h("dt", { text: field }), h("dd", {}, this.value(field, value)));
    }
    const parts = [list];
    for (const [field, value] of nested) {
      if (field === "attributes" && !Array.isArray(value)) {
        const attributes = h("dl", { class: "fields" });
        for (const [name, text] of Object.entries(value)) {
          attributes.append(h("dt", { text: name }), h("dd", {}, this.value(name, text)));
        }
        parts.push(h("h4", { text: "attributes" }), Object.keys(value).length ? attributes : h("p", { class: "muted", text: "none" }));
      } else {
        parts.push(h("h4", { text: field }), h("pre", { class: "json", text: JSON.stringify(value, null, 2) }));
      }
    }
    parts.push(h("div", { class: "detail-actions" }, this.actions(event)));
    return parts;
  }

  value(field, value) {
    if (value === null || value === undefined || value === "") return h("span", { class: "muted", text: value === "" ? "(empty)" : "null" });
    const href = this.linkFor(field, value);
    if (href) return h("a", { href, class: "id-link", title: `Filter on ${field}`, text: String(value) });
    return String(value);
  }
}

export const timeCell = (event) => time(event.occurred_at, event.occurred_at_us);
