// The console's only way to the server: the public API (`/v1/*`, `/v1/stream`), with the key
// the person signed in with. Anything the console does, a script with the same key can do.

const KEY = "ledgerline.key";
const WHO = "ledgerline.who";

/** An answer that was not 2xx: the API's `{"error": {"code", "message"}}`, or what we know. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return `${this.code}: ${this.message}`;
  }
}

// Kept in sessionStorage: it lives as long as the tab and is not sent anywhere on its own.
export const session = {
  key: () => sessionStorage.getItem(KEY),
  who: () => {
    try {
      return JSON.parse(sessionStorage.getItem(WHO) || "null");
    } catch {
      return null;
    }
  },
  save(key, who) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(WHO, JSON.stringify(who));
  },
  clear() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(WHO);
  },
};

// Set by the app: what to do when the API says the key is no good (back to sign-in).
let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

/** Builds `path?query` from an object, leaving out empty values; arrays repeat the name. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const one of Array.isArray(value) ? value : [value]) query.append(name, String(one));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || "the server answered with an error";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON (a proxy's page, say): keep the status line.
  }
  return new ApiError(response.status, code, message);
}

/** GET with the session's key (or `key`); the raw Response once it is 2xx. */
export async function fetchOk(pathAndQuery, { key, signal } = {}) {
  const useKey = key ?? session.key();
  let response;
  try {
    response = await fetch(pathAndQuery, {
      headers: useKey ? { Authorization: `Bearer ${useKey}` } : {},
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", `the API could not be reached (${error.message})`);
  }
  if (response.ok) return response;
  const error = await errorFrom(response);
  if (response.status === 401 && key === undefined) onUnauthorized(error);
  throw error;
}

/** GET a JSON answer. */
export async function get(path, params, options) {
  const response = await fetchOk(withQuery(path, params), options);
  return response.json();
}

/** GET a file and hand it to the browser as a download named `filename`. */
export async function download(path, params, filename) {
  const response = await fetchOk(withQuery(path, params));
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return blob.size;
}

/**
 * The websocket URL of `/v1/stream`. Browsers cannot set headers on a websocket, so the key
 * goes in `?key=`, which the API takes for exactly this reason.
 */
export function streamUrl(params) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${withQuery("/v1/stream", { ...params, key: session.key() })}`;
}

/**
 * Why a websocket could not open: the browser hides the HTTP answer to the upgrade, so ask
 * again as a plain GET, which the API answers with the same checks (key, filters) and then
 * `not_a_websocket` when they all pass.
 */
export async function whyStreamRefused(params) {
  try {
    await fetchOk(withQuery("/v1/stream", params));
    return null;
  } catch (error) {
    if (error.code === "not_a_websocket") return null;
    return error;
  }
}
