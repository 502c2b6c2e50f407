// A candidate's trace as the page shows it: prose (LaTeX typeset), its Python blocks, and the output
// blocks the service appended after running them. The text is the service's own trace format, so the
// page rebuilds it from the streamed events exactly as the result's `text` has it.

import { renderText } from "./math.js";

const OPENING = /```([A-Za-z0-9_+-]*)[^\S\n]*\n/g;
const CLOSING = "```";

/**
 * The parts of `text`: {kind: "prose"|"code"|"output", text, open}. `open` is true for a block whose
 * closing fence has not been generated yet (the tail of a candidate still writing).
 */
export function parseTrace(text) {
  const parts = [];
  let position = 0;
  OPENING.lastIndex = 0;
  for (let match; (match = OPENING.exec(text)); ) {
    if (match.index > position) parts.push({ kind: "prose", text: text.slice(position, match.index), open: false });
    const bodyStart = match.index + match[0].length;
    const end = text.indexOf(CLOSING, bodyStart);
    const kind = match[1] === "output" ? "output" : "code";
    if (end < 0) {
      parts.push({ kind, text: text.slice(bodyStart), open: true });
      return parts;
    }
    parts.push({ kind, text: text.slice(bodyStart, end).replace(/\n$/, ""), open: false });
    position = end + CLOSING.length;
    OPENING.lastIndex = position;
  }
  if (position < text.length) parts.push({ kind: "prose", text: text.slice(position), open: true });
  return parts;
}

/** `text` without a fence that is still being typed at its end (```, ```pyth...), which would flicker. */
function withoutPartialFence(text) {
  return text.replace(/`{1,3}[A-Za-z]*$/, "");
}

/**
 * Draws a trace into `container`, reusing the elements of parts that did not change since the last
 * draw: a candidate streams dozens of deltas a second, and typesetting its finished prose again each
 * time would be wasted work.
 */
export class TraceView {
  constructor(container) {
    this.container = container;
    this.drawn = []; // [{key, element}] per part, in order
  }

  /** Draws `text`; `executions` are the execution events in order (one per output block); `live`: still writing. */
  draw(text, executions, live) {
    const parts = parseTrace(text).filter((part) => part.kind !== "prose" || part.text.trim() !== "");
    let outputs = 0;
    const wanted = parts.map((part, position) => {
      const last = position === parts.length - 1;
      const execution = part.kind === "output" ? executions[outputs++] : undefined;
      const shown = last && live && part.kind === "prose" ? withoutPartialFence(part.text) : part.text;
      // Prose still being written is shown as text, typeset once it is complete.
      const typeset = part.kind === "prose" && !(last && live);
      const key = JSON.stringify([part.kind, shown, part.open, typeset, execution ?? null, last && live]);
      return { key, build: () => buildPart(part.kind, shown, part.open && live, typeset, execution) };
    });
    let same = 0;
    while (same < wanted.length && same < this.drawn.length && wanted[same].key === this.drawn[same].key) same++;
    for (const stale of this.drawn.splice(same)) stale.element.remove();
    for (const part of wanted.slice(same)) {
      const element = part.build();
      this.container.append(element);
      this.drawn.push({ key: part.key, element });
    }
  }

  clear() {
    this.drawn = [];
    this.container.replaceChildren();
  }
}

function buildPart(kind, text, pending, typeset, execution) {
  if (kind === "prose") {
    const prose = element("div", "prose");
    if (typeset) renderText(prose, text.trim());
    else prose.textContent = text.trimStart();
    return prose;
  }
  return kind === "code" ? codeBlock(text, pending) : outputBlock(text, pending, execution);
}

function codeBlock(code, pending) {
  const figure = element("figure", "block code-block");
  const caption = element("figcaption", "block-head");
  caption.append(element("span", "block-title", "Python"));
  if (pending) caption.append(element("span", "block-note", "writing…"));
  const pre = element("pre");
  pre.append(element("code", "", code));
  figure.append(caption, pre);
  return figure;
}

function outputBlock(output, pending, execution) {
  // The status the execution event gave; "running" while the block runs; none for a trace read whole.
  const status = execution?.status ?? (pending ? "running" : undefined);
  const figure = element("figure", "block output-block");
  if (status) figure.dataset.status = status;
  const caption = element("figcaption", "block-head");
  caption.append(element("span", "block-title", "Output"));
  if (status) caption.append(element("span", `exec-status exec-${status}`, pending ? "running…" : status));
  if (execution) caption.append(element("span", "block-note", formatDuration(execution.duration_s)));
  const pre = element("pre");
  pre.append(element("code", "", output || (pending ? "" : "(no output)")));
  figure.append(caption, pre);
  return figure;
}

/** Seconds, readable at a glance: 8 ms, 0.42 s, 12.3 s, 2 min 05 s. */
export function formatDuration(seconds) {
  if (seconds < 0.1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 10) return `${seconds.toFixed(2)} s`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`;
}

export function element(tag, className = "", text = undefined) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
