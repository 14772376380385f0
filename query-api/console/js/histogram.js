// The histogram over a view's range, stacked by level, drawn as SVG from
// `/v1/stats/histogram`. Each bar segment carries its bucket, level and count as data
// attributes and a tooltip. Dragging across the chart (or Shift+arrow keys) zooms the range.

import { svg, LEVELS } from "./dom.js";

const HEIGHT = 160;
const TOP = 10;
const BOTTOM = 22;
const LEFT = 44;
const STEPS = [1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 86400];

/** A bucket width that gives at most about 120 bars over the range. */
export function intervalFor(sinceMs, untilMs) {
  const seconds = Math.max(1, (untilMs - sinceMs) / 1000);
  return STEPS.find((step) => seconds / step <= 120) || 86400;
}

function label(ms, spanMs) {
  const date = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  const clock = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  if (spanMs <= 120_000) return `${clock}:${pad(date.getSeconds())}`;
  if (spanMs <= 86_400_000) return clock;
  return `${date.getMonth() + 1}/${date.getDate()} ${clock}`;
}

/** A zoom target in whole seconds (the API's times) and at least one second long. */
function zoomTo(onZoom, from, to) {
  const start = Math.floor(from / 1000) * 1000;
  onZoom(start, Math.max(Math.ceil(to / 1000) * 1000, start + 1000));
}

/**
 * Draws `answer` (the histogram JSON) over [sinceMs, untilMs) into `host`; `onZoom(fromMs,
 * toMs)` is called when a range is dragged out.
 */
export function drawHistogram(host, answer, range, onZoom) {
  const { sinceMs, untilMs } = range;
  // Drawn at the host's own pixel width (and again when it changes), so text is never
  // stretched and bars stay crisp in a narrow window.
  const WIDTH = Math.max(280, Math.round(host.clientWidth || 1000));
  const span = Math.max(1, untilMs - sinceMs);
  const plotWidth = WIDTH - LEFT;
  const x = (ms) => LEFT + ((ms - sinceMs) / span) * plotWidth;
  const byStart = new Map();
  for (const bucket of answer.buckets) {
    const start = Math.floor(bucket.start_us / 1000);
    if (!byStart.has(start)) byStart.set(start, []);
    byStart.get(start).push(bucket);
  }
  let max = 1;
  for (const buckets of byStart.values()) {
    max = Math.max(max, buckets.reduce((sum, b) => sum + b.count, 0));
  }
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const barWidth = Math.max(1, (answer.interval_secs * 1000 * plotWidth) / span - 1);
  const chart = svg("svg", {
    class: "histogram-chart",
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": `Events per ${answer.interval_secs} s by level`,
    tabindex: "0",
    "data-interval-secs": String(answer.interval_secs),
  });
  // The y axis: zero and the tallest bar.
  chart.append(
    svg("line", { class: "axis", x1: LEFT, x2: WIDTH, y1: HEIGHT - BOTTOM, y2: HEIGHT - BOTTOM }),
    svg("text", { class: "tick", x: LEFT - 6, y: TOP + 8, "text-anchor": "end", text: String(max) }),
    svg("text", { class: "tick", x: LEFT - 6, y: HEIGHT - BOTTOM, "text-anchor": "end", text: "0" }),
  );
  const ticks = WIDTH < 600 ? 2 : 4;
  for (let i = 0; i <= ticks; i++) {
    const ms = sinceMs + (span * i) / ticks;
    chart.append(
      svg("text", {
        class: "tick",
        x: x(ms),
        y: HEIGHT - 6,
        "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle",
        text: label(ms, span),
      }),
    );
  }
  for (const [start, buckets] of byStart) {
    let y = HEIGHT - BOTTOM;
    const ordered = [...buckets].sort((a, b) => LEVELS.indexOf(a.key) - LEVELS.indexOf(b.key));
    for (const bucket of ordered) {
      const height = (bucket.count / max) * plotHeight;
      y -= height;
      const level = LEVELS.includes(bucket.key) ? bucket.key.toLowerCase() : "unknown";
      // A bucket may start before the range (buckets are aligned to their width): draw only
      // the part inside the plot.
      const left = Math.max(LEFT, x(start));
      const right = Math.min(WIDTH, x(start) + barWidth);
      chart.append(
        svg(
          "rect",
          {
            class: `bar bar-${level}`,
            x: left.toFixed(2),
            y: y.toFixed(2),
            width: Math.max(1, right - left).toFixed(2),
            height: Math.max(height, 0.5).toFixed(2),
            "data-start-us": String(bucket.start_us),
            "data-level": bucket.key,
            "data-count": String(bucket.count),
          },
          svg("title", { text: `${bucket.start} ${bucket.key}: ${bucket.count}` }),
        ),
      );
    }
  }
  const selection = svg("rect", { class: "selection", x: 0, y: TOP, width: 0, height: plotHeight, visibility: "hidden" });
  chart.append(selection);

  // Dragging: pointer positions are turned into chart coordinates, then into times.
  const toChartX = (clientX) => {
    const box = chart.getBoundingClientRect();
    return ((clientX - box.left) / box.width) * WIDTH;
  };
  const toMs = (chartX) => sinceMs + ((Math.min(WIDTH, Math.max(LEFT, chartX)) - LEFT) / plotWidth) * span;
  let from = null;
  chart.addEventListener("pointerdown", (event) => {
    from = toChartX(event.clientX);
    chart.setPointerCapture(event.pointerId);
    selection.setAttribute("visibility", "visible");
    selection.setAttribute("x", from);
    selection.setAttribute("width", 0);
  });
  chart.addEventListener("pointermove", (event) => {
    if (from === null) return;
    const to = toChartX(event.clientX);
    selection.setAttribute("x", Math.min(from, to));
    selection.setAttribute("width", Math.abs(to - from));
  });
  const finish = (event) => {
    if (from === null) return;
    const to = toChartX(event.clientX);
    const start = from;
    from = null;
    selection.setAttribute("visibility", "hidden");
    if (Math.abs(to - start) < 4) return;
    zoomTo(onZoom, toMs(Math.min(start, to)), toMs(Math.max(start, to)));
  };
  chart.addEventListener("pointerup", finish);
  chart.addEventListener("pointercancel", () => {
    from = null;
    selection.setAttribute("visibility", "hidden");
  });
  // The keyboard's zoom: Shift+Left/Right keep the left or right half, Shift+Down zooms out.
  chart.addEventListener("keydown", (event) => {
    if (!event.shiftKey) return;
    const middle = sinceMs + span / 2;
    if (event.key === "ArrowLeft") zoomTo(onZoom, sinceMs, middle);
    else if (event.key === "ArrowRight") zoomTo(onZoom, middle, untilMs);
    else if (event.key === "ArrowDown") zoomTo(onZoom, sinceMs - span / 2, untilMs + span / 2);
    else return;
    event.preventDefault();
  });

  const total = answer.buckets.reduce((sum, b) => sum + b.count, 0);
  host.replaceChildren(chart);
  return total;
}
