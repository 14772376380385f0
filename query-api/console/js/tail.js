// A live tail on `/v1/stream`: opens the websocket with a view's filters, keeps the newest
// cursor the server sent (on every event, heartbeat, lagged and gap message), and after a
// dropped connection or a pause reconnects with `since=<cursor>`, so the server sends exactly
// what was missed: no gap, no repeat.

import { streamUrl, whyStreamRefused } from "./api.js";

const MAX_BACKOFF_MS = 10_000;

export class LiveTail {
  /**
   * params: the /v1/events filters (no since/until); since: where to start the first time
   * (an RFC 3339 time, or nothing for "from now"); onEvent(event); onNotice(kind, text);
   * onState(state), state one of connecting, catching-up (open, replaying what was missed),
   * live (the server said `subscribed`), paused, reconnecting, failed, stopped.
   */
  constructor({ params, since, onEvent, onNotice, onState }) {
    this.params = params;
    this.since = since || null;
    this.cursor = null;
    this.onEvent = onEvent;
    this.onNotice = onNotice || (() => {});
    this.onState = onState || (() => {});
    this.socket = null;
    this.backoff = 500;
    this.timer = null;
    this.state = "stopped";
    // Bumped by every connect and close, so a slow continuation of an old socket (waiting
    // for the refusal probe) cannot act on a newer one.
    this.generation = 0;
    // Opens that failed with no reason the API would give (a proxy without websockets, a
    // policy blocking them): said once it keeps happening, instead of retrying in silence.
    this.unexplained = 0;
  }

  setState(state) {
    this.state = state;
    this.onState(state);
  }

  start() {
    this.connect("connecting");
  }

  /** Stops listening but keeps the cursor, so `resume` continues where this stopped. */
  pause() {
    this.close();
    this.setState("paused");
  }

  resume() {
    if (this.state === "paused" || this.state === "failed") this.connect("connecting");
  }

  stop() {
    this.close();
    this.setState("stopped");
  }

  close() {
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onclose = socket.onmessage = socket.onerror = socket.onopen = null;
      try {
        socket.close(1000, "closed by the console");
      } catch {
        // Already closing.
      }
    }
  }

  connect(state) {
    this.close();
    this.setState(state);
    const from = this.cursor || this.since;
    const socket = new WebSocket(streamUrl({ ...this.params, since: from || undefined }));
    this.socket = socket;
    const generation = this.generation;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.unexplained = 0;
      // Open, but replaying what was missed (a cursor or a time); live at `subscribed`.
      this.setState("catching-up");
    };
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.closed(close, opened, generation);
    };
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.cursor) this.cursor = message.cursor;
    switch (message.type) {
      case "event":
        this.onEvent(message.event);
        break;
      case "subscribed":
        this.backoff = 500;
        this.setState("live");
        break;
      case "lagged":
        this.onNotice(
          "warn",
          `The server dropped ${message.dropped} event(s) because this tab fell behind (at ${new Date().toLocaleTimeString()}). Search the range to see them.`,
        );
        break;
      case "gap":
        this.onNotice(
          "warn",
          `${message.missed} event(s) from before this reconnect were no longer held by the broker and are not shown.`,
        );
        break;
      case "error":
        this.onNotice("error", `${message.code}: ${message.message}`);
        if (message.code === "history_too_large" || message.code === "backlog_too_large") {
          // Too far behind to catch up through the stream: continue from now.
          this.cursor = null;
          this.since = null;
        }
        break;
      default:
        break;
    }
  }

  async closed(close, opened, generation) {
    if (!opened) {
      // The upgrade was refused; the browser does not say why, so ask the API.
      const refusal = await whyStreamRefused({ ...this.params, since: this.cursor || this.since || undefined });
      if (generation !== this.generation) return;
      if (refusal) {
        this.onNotice("error", `${refusal.code}: ${refusal.message}`);
        const retry = refusal.status === 429 || refusal.status >= 500 || refusal.status === 0;
        if (!retry) {
          this.setState("failed");
          return;
        }
      } else if (++this.unexplained >= 3) {
        this.onNotice(
          "error",
          "The live stream's websocket could not be opened, and the API gives no reason (a proxy that does not pass websockets?). Retrying.",
        );
      }
    } else if (close.code === 4413) {
      this.cursor = null;
      this.since = null;
      this.onNotice("warn", "This tab was too far behind to catch up; the tail continues from now.");
    } else if (close.code === 4410) {
      this.onNotice("warn", "This tab could not keep up; reconnecting from where it was.");
    }
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    this.setState("reconnecting");
    this.timer = setTimeout(() => {
      if (generation === this.generation) this.connect("reconnecting");
    }, wait);
  }
}
