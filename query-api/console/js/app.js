// The console's shell: sign-in, the header with the role, and the hash router
// (#/explore, #/jobs, #/jobs/<id>, #/audit, #/signin). Each page returns a cleanup that
// closes its sockets and aborts its requests when the page changes.

import { get, session, setUnauthorizedHandler } from "./api.js";
import { h, parseHash, notify } from "./dom.js";
import { renderExplore } from "./explore.js";
import { renderJobs } from "./jobs.js";
import { renderAudit } from "./audit.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const whoBox = document.getElementById("who");
let cleanup = () => {};
let signInMessage = "";
let afterSignIn = "#/explore";

const PAGES = { explore: renderExplore, jobs: renderJobs, audit: renderAudit };

function navigate(hash) {
  location.hash = hash;
}

function signOut(message) {
  // Several requests may come back 401 at once: the first one signs out.
  if (!session.key() && location.hash.startsWith("#/signin")) return;
  session.clear();
  signInMessage = message || "";
  if (!location.hash.startsWith("#/signin")) afterSignIn = location.hash || "#/explore";
  navigate("#/signin");
  route(true);
}

setUnauthorizedHandler((error) => signOut(`Signed out: ${error.message}`));

function header() {
  const who = session.who();
  const current = parseHash(location.hash).path[0];
  const links = [["explore", "Explore"], ["jobs", "Jobs"]];
  if (who && who.can_review_audit) links.push(["audit", "Audit"]);
  nav.replaceChildren(
    ...(who ? links : []).map(([page, text]) =>
      h("a", { href: `#/${page}`, id: `nav-${page}`, "aria-current": current === page ? "page" : null, text }),
    ),
  );
  whoBox.replaceChildren(
    ...(who
      ? [
          h("span", { class: `role role-${who.role}`, id: "role", text: who.role }),
          h("span", { class: "key-id muted", text: who.key_id }),
          h("button", { type: "button", class: "secondary", id: "sign-out", onclick: () => signOut("Signed out."), text: "Sign out" }),
        ]
      : []),
  );
}

function renderSignIn() {
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", spellcheck: "false", required: true, placeholder: "llk_…" });
  const message = h("div", { class: "notices", id: "signin-message" });
  const button = h("button", { type: "submit", text: "Sign in" });
  const form = h(
    "form",
    { class: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title", text: "Sign in to Ledgerline" }),
    h("p", { class: "muted", text: "Paste an API key. It is kept in this tab only (sessionStorage) and sent to this server's API." }),
    h("label", { for: "api-key" }, "API key"),
    input,
    button,
    message,
  );
  if (signInMessage) notify(message, "error", signInMessage);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    try {
      const who = await get("/v1/whoami", {}, { key });
      session.save(key, who);
      signInMessage = "";
      const target = afterSignIn.startsWith("#/signin") ? "#/explore" : afterSignIn;
      afterSignIn = "#/explore";
      navigate(target);
      route(true);
    } catch (error) {
      notify(message, "error", error.status === 401 ? `That key was refused: ${error.message}` : `${error.code}: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  });
  main.replaceChildren(form);
  input.focus();
}

let rendered = null;
function route(force) {
  const parsed = parseHash(location.hash);
  const page = parsed.path[0] || "explore";
  // The hashchange after a navigate() that was already drawn: nothing to do.
  if (force !== true && rendered === location.hash) return;
  rendered = location.hash;
  cleanup();
  cleanup = () => {};
  header();
  if (!session.key()) {
    if (page !== "signin") afterSignIn = location.hash || "#/explore";
    return renderSignIn();
  }
  if (page === "signin") {
    return renderSignIn();
  }
  const render = PAGES[page];
  if (!render) {
    main.replaceChildren(h("h1", { text: "Not found" }), h("p", {}, "There is no page here. ", h("a", { href: "#/explore", text: "Go to Explore" })));
    return;
  }
  try {
    cleanup = render(main, parsed, {
      who: session.who() || {},
      navigate,
      rerender: () => route(true),
    }) || (() => {});
  } catch (error) {
    main.replaceChildren(h("p", { class: "notice notice-error", role: "alert", text: `This page failed to draw: ${error.message}` }));
  }
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", () => route(false));
// Never a blank page: anything thrown outside a page's own handling is shown.
window.addEventListener("error", (event) => showFatal(event.message));
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason && event.reason.name === "AbortError") return;
  showFatal(event.reason && event.reason.message ? event.reason.message : String(event.reason));
});
function showFatal(text) {
  const banner = document.getElementById("fatal");
  banner.hidden = false;
  banner.textContent = `Something went wrong in the console: ${text}`;
}

if (!location.hash) location.replace("#/explore");
route(true);
