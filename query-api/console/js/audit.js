// Audit review (auditor role): audit events with actor, action, target and outcome filters;
// the chain status per partition from `/v1/audit/verify`; a proof download per event and an
// export download for a range. Every one of these reads is itself recorded in the audit
// trail by the API before it answers. Other roles get the API's own refusal here, shown as
// it is: the console hides the page, and the API refuses it anyway.

import { get, download } from "./api.js";
import { h, notify, showError, resolveRange, rangePicker, hashFor, time } from "./dom.js";
import { EventTable, timeCell } from "./events.js";

const FILTERS = ["actor", "action", "target", "outcome"];

export function renderAudit(root, route, ctx) {
  const state = { range: "24h", ...route.params };
  if (state.since && state.until) delete state.range;
  const notices = h("div", { class: "notices", id: "audit-notices" });
  const chain = h("section", { class: "chain", id: "chain", "aria-label": "Chain status", "aria-busy": "true" }, h("p", { class: "muted", text: "Verifying the chain…" }));
  const controller = new AbortController();
  const signal = controller.signal;

  if (!ctx.who.can_review_audit) {
    // Ask the API rather than assume: its answer (403, and a DENIED record in the trail)
    // is the refusal shown.
    root.replaceChildren(h("h1", { text: "Audit review" }), notices);
    get("/v1/audit/verify", {}, { signal }).then(
      () => notify(notices, "error", "This key may not review the audit archive."),
      (error) => {
        if (error.name === "AbortError") return;
        root.replaceChildren(
          h("h1", { text: "Audit review" }),
          h("div", { class: "refusal", role: "alert", id: "refusal" },
            h("h2", { text: "Refused" }),
            h("p", { text: `${error.code}: ${error.message}` }),
            h("p", { class: "muted", text: "Audit review is for keys with the auditor role. The attempt has been recorded in the audit trail." })),
        );
      },
    );
    return () => controller.abort();
  }

  const range = resolveRange(state);
  const picker = rangePicker("audit", state, range);
  const inputs = Object.fromEntries(FILTERS.filter((f) => f !== "outcome").map((name) => [name, h("input", { id: `audit-${name}`, value: state[name] || "", autocomplete: "off", size: "14" })]));
  inputs.outcome = h("select", { id: "audit-outcome" }, ["", "success", "failure", "denied"].map((value) => h("option", { value, text: value || "Any", selected: (state.outcome || "") === value })));
  const form = h(
    "form",
    { class: "toolbar", role: "search", "aria-label": "Search audit events" },
    picker.elements,
    FILTERS.map((name) => h("label", { for: `audit-${name}` }, `${name[0].toUpperCase()}${name.slice(1)} `, inputs[name])),
    h("button", { type: "submit", text: "Search" }),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = picker.value();
    if (chosen.error) return notify(notices, "error", chosen.error);
    const next = { ...Object.fromEntries(FILTERS.map((name) => [name, inputs[name].value.trim()])), ...chosen };
    const hash = hashFor("audit", next);
    if (hash === location.hash) ctx.rerender();
    else ctx.navigate(hash);
  });

  const table = new EventTable({
    caption: "Audit events, newest first",
    columns: [
      { title: "Time", class: "col-time", cell: timeCell },
      { title: "Actor", class: "col-actor", cell: (e) => (e.actor ? `${e.actor.id} (${e.actor.kind})` : "") },
      { title: "Action", class: "col-action", cell: (e) => h("span", { class: "event-name", text: e.action }) },
      { title: "Target", class: "col-target", cell: (e) => (e.target ? `${e.target.kind}:${e.target.id}` : "—") },
      { title: "Outcome", class: "col-outcome", cell: (e) => h("span", { class: `outcome outcome-${String(e.outcome).toLowerCase()}`, text: e.outcome }) },
      { title: "Archive", class: "col-archive", cell: (e) => (e.archive ? `p${e.archive.partition} @ ${e.archive.offset}` : "") },
    ],
    linkFor: (field, value) => (field === "action" ? hashFor("audit", { ...state, action: value }) : null),
    actions: (event) => [
      h("button", {
        type: "button",
        class: "secondary proof",
        onclick: async (click) => {
          click.target.disabled = true;
          try {
            await download(`/v1/audit/events/${encodeURIComponent(event.event_id)}/proof`, {}, `proof-${event.event_id}.json`);
            notify(notices, "ok", `Proof for ${event.event_id} downloaded; check it offline with \`ledgerline-consumer archive check-proof\`.`);
          } catch (error) {
            showError(notices, error);
          } finally {
            click.target.disabled = false;
          }
        },
        text: "Download proof",
      }),
      event.actor ? h("a", { href: hashFor("audit", { ...state, actor: event.actor.id }), text: `Actor ${event.actor.id}` }) : null,
      event.target ? h("a", { href: hashFor("audit", { ...state, target: event.target.id }), text: `Target ${event.target.id}` }) : null,
    ],
  });
  const more = h("button", { type: "button", class: "secondary", hidden: true, text: "Load more" });
  const exportForm = exportSection(notices);

  root.replaceChildren(
    h("h1", { text: "Audit review" }),
    h("h2", { text: "Chain status" }),
    chain,
    exportForm.section,
    h("h2", { text: "Audit events" }),
    form,
    notices,
    h("section", { class: "results", "aria-label": "Audit events" }, table.scroller, h("div", { class: "more" }, more)),
  );

  const params = { since: range.since, until: range.until, ...Object.fromEntries(FILTERS.map((name) => [name, state[name] || ""])) };
  let cursor = null;
  const showPage = (page) => {
    table.add(page.events);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    if (!table.size) table.body.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "6", text: "No audit events match in this range." })));
  };
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      showPage(await get("/v1/audit/events", { ...params, cursor, limit: 100 }, { signal }));
    } catch (error) {
      if (error.name !== "AbortError") showError(notices, error);
    } finally {
      more.disabled = false;
    }
  });
  get("/v1/audit/events", { ...params, limit: 100 }, { signal }).then(showPage, (error) => {
    if (error.name !== "AbortError") showError(notices, error);
  });
  const verify = async () => {
    chain.setAttribute("aria-busy", "true");
    try {
      const report = await get("/v1/audit/verify", {}, { signal });
      drawChain(chain, report, verify);
      exportForm.partitions(report.partitions.map((p) => p.partition));
    } catch (error) {
      if (error.name === "AbortError") return;
      chain.replaceChildren(h("p", { class: "notice notice-error", role: "alert", text: `The chain could not be verified: ${error.code}: ${error.message}` }),
        h("button", { type: "button", class: "secondary", onclick: verify, text: "Try again" }));
    }
    chain.setAttribute("aria-busy", "false");
  };
  verify();
  return () => controller.abort();
}

function drawChain(host, report, again) {
  const cards = report.partitions.map((p) => {
    const first = p.problems && p.problems[0];
    const last = p.last_checkpoint;
    return h(
      "article",
      { class: `partition ${p.intact ? "intact" : "broken"}`, dataset: { partition: String(p.partition), intact: String(p.intact) } },
      h("h3", {}, `${p.topic} / partition ${p.partition} `, h("span", { class: "verdict", text: p.intact ? "✓ intact" : "✗ BROKEN" })),
      h("p", { class: "small", text: `${p.entries} entries (${p.events} events, ${p.undecodable} undecodable, ${p.gaps} gaps), ${p.checkpoints} checkpoints, ${p.unsigned_entries} not yet signed` }),
      first
        ? h("div", { class: "problem", role: "alert" },
            h("p", {}, h("strong", { text: "First bad record: " }),
              `offset ${first.offset ?? "?"}${first.event_id ? `, event ${first.event_id}` : ""} — ${first.kind.replace(/_/g, " ")}`),
            h("p", { class: "problem-detail", text: first.detail }),
            p.problem_count > 1 ? h("p", { class: "small", text: `${p.problem_count} problems in all.` }) : null)
        : null,
      last
        ? h("p", { class: "small checkpoint" }, "Last checkpoint: through offset ", String(last.last_offset), ", signed ",
            time(undefined, last.created_at_us), " by key ", h("code", { text: last.key_id }))
        : h("p", { class: "small muted", text: "No checkpoint yet." }),
    );
  });
  host.replaceChildren(
    h("p", { class: `chain-summary ${report.intact ? "intact" : "broken"}`, id: "chain-summary" },
      report.intact ? "The archive's chain is intact. " : "The archive's chain is BROKEN. ",
      h("span", { class: "muted small" }, "Verified ", time(undefined, report.verified_at_us), " "),
      h("button", { type: "button", class: "secondary", onclick: again, text: "Verify again" })),
    cards.length ? h("div", { class: "partitions" }, cards) : h("p", { class: "muted", text: "The archive is empty." }),
  );
}

function exportSection(notices) {
  const partition = h("select", { id: "export-partition" }, h("option", { value: "", text: "All" }));
  const from = h("input", { id: "export-from", type: "number", min: "0", inputmode: "numeric", size: "8" });
  const to = h("input", { id: "export-to", type: "number", min: "0", inputmode: "numeric", size: "8" });
  const button = h("button", { type: "submit", text: "Download export" });
  const form = h(
    "form",
    { class: "toolbar export", "aria-label": "Export a range of the archive" },
    h("label", { for: "export-partition" }, "Partition ", partition),
    h("label", { for: "export-from" }, "From offset ", from),
    h("label", { for: "export-to" }, "To offset ", to),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      const name = `ledgerline-audit-export${partition.value ? `-p${partition.value}` : ""}.tar`;
      const bytes = await download("/v1/audit/export", { partition: partition.value, from: from.value, to: to.value }, name);
      notify(notices, "ok", `Export downloaded (${bytes.toLocaleString()} bytes); check it offline with \`ledgerline-consumer archive verify --bundle\`.`);
    } catch (error) {
      showError(notices, error);
    } finally {
      button.disabled = false;
    }
  });
  return {
    section: h("details", { class: "export-section" }, h("summary", { text: "Export a range for offline verification" }), form),
    partitions(list) {
      // Refilled after each verification; a partition already chosen stays chosen.
      const chosen = partition.value;
      partition.replaceChildren(h("option", { value: "", text: "All" }), ...list.map((p) => h("option", { value: String(p), text: String(p) })));
      if (list.map(String).includes(chosen)) partition.value = chosen;
    },
  };
}
