// One row per candidate: a summary line (status, progress, the line it is writing, its answer) that
// opens onto its trace. Rows are built once, at the start event, so the list never reflows as text
// streams in; a closed row only updates its summary line.

import { renderAnswer } from "./math.js";
import { TraceView, element } from "./trace.js";

export const STATUS_LABELS = {
  waiting: "Waiting",
  running: "Running",
  answered: "Answered",
  pruned: "Pruned",
  restarted: "Restarted",
  exhausted: "Exhausted",
  cancelled: "Cancelled",
  failed: "Failed",
  stopped: "Stopped",
};

export class CandidateRow {
  constructor(index, maxSteps) {
    this.index = index;
    this.maxSteps = maxSteps;
    this.status = "waiting";
    this.step = 0;
    this.attempt = 0;
    this.text = "";
    this.executions = [];
    this.finished = null; // the candidate event
    this.dirty = false; // changed since the summary was drawn
    this.traceStale = false; // changed since the trace was drawn

    this.root = element("li", "candidate");
    this.root.id = `candidate-${index}`;
    this.details = element("details");
    const summary = element("summary");
    this.number = element("span", "cand-index", `#${index + 1}`);
    this.badge = element("span", "badge");
    this.progress = element("span", "cand-progress");
    this.snippet = element("span", "cand-snippet");
    this.answer = element("span", "cand-answer");
    summary.append(this.number, this.badge, this.progress, this.snippet, this.answer);
    const body = element("div", "cand-body");
    this.traceElement = element("div", "trace");
    this.footer = element("p", "cand-footer");
    body.append(this.traceElement, this.footer);
    this.details.append(summary, body);
    this.root.append(this.details);
    this.trace = new TraceView(this.traceElement);
    this.details.addEventListener("toggle", () => this.details.open && this.draw());
    this.setStatus("waiting");
    this.drawSummary();
  }

  get live() {
    return this.status === "running" || this.status === "waiting";
  }

  /** A `step` event: its text continues the candidate's, or starts it over on a new attempt. */
  onStep(event) {
    if (event.attempt !== this.attempt) {
      this.attempt = event.attempt;
      this.text = "";
      this.executions = [];
      this.trace.clear();
    }
    this.step = event.step;
    this.text += event.text;
    if (this.status === "waiting") this.setStatus("running");
    this.dirty = true;
  }

  /** An `execution` event: the output block the service appended to the text (feedback, closing fence). */
  onExecution(event) {
    this.executions.push(event);
    this.text += `${event.feedback}\n\`\`\``;
    this.dirty = true;
  }

  /** The `candidate` event: how it ended. */
  onFinished(event) {
    this.finished = event;
    this.step = event.steps || this.step;
    this.setStatus(event.status);
    this.dirty = true;
  }

  /** The result's summary of this candidate: its full text is the authority on what it wrote. */
  onResult(summary) {
    if (summary.text != null) this.text = summary.text;
    this.attempt = summary.restarts ?? this.attempt;
    this.finished = { ...summary, candidate: summary.index };
    this.setStatus(summary.status);
    this.dirty = true;
  }

  /** The page stopped listening (Stop, or the stream ended without this candidate's end). */
  onStopped() {
    if (this.live) {
      this.setStatus("stopped");
      this.dirty = true;
    }
  }

  setStatus(status) {
    this.status = status;
    this.root.dataset.status = status;
    this.badge.dataset.status = status;
    this.badge.textContent = STATUS_LABELS[status] ?? status;
  }

  /** Marks the row whose vote won (the trace the answer links to). */
  markWinner(isWinner) {
    this.root.classList.toggle("is-winner", isWinner);
  }

  open() {
    this.details.open = true;
    this.draw();
  }

  /** Brings the changes since the last draw on screen (called once per animation frame). */
  draw() {
    if (this.dirty) {
      this.drawSummary();
      this.dirty = false;
      this.traceStale = true;
    }
    if (this.traceStale && this.details.open) {  // a closed row's trace is drawn when it opens
      this.trace.draw(this.text, this.executions, this.live);
      this.drawFooter();
      this.traceStale = false;
    }
  }

  drawSummary() {
    const parts = [];
    if (this.step) parts.push(`step ${this.step}/${this.maxSteps}`);
    if (this.attempt) parts.push(`attempt ${this.attempt + 1}`);
    const executed = this.finished?.executions ?? this.executions.length;
    if (executed) parts.push(`${executed} run${executed === 1 ? "" : "s"}`);
    this.progress.textContent = parts.join(" · ");
    this.snippet.textContent = this.finished?.error && this.status !== "answered" ? this.finished.error : lastLine(this.text);
    const vote = this.finished?.vote ?? this.finished?.answer;
    if (vote != null && vote !== this.shownAnswer) {
      this.shownAnswer = vote;
      renderAnswer(this.answer, vote);
      this.answer.title = `Answer: ${vote}`;
    }
  }

  drawFooter() {
    const finished = this.finished;
    if (!finished) {
      this.footer.textContent = "";
      return;
    }
    const steps = `${finished.steps} step${finished.steps === 1 ? "" : "s"}`;
    const facts = [`${STATUS_LABELS[finished.status] ?? finished.status} after ${steps}`];
    if (finished.answer != null) facts.push(`answer ${finished.answer}`);
    if (finished.prompt_tokens != null) {
      facts.push(`${formatCount(finished.prompt_tokens)} prompt + ${formatCount(finished.completion_tokens)} completion tokens`);
    }
    this.footer.textContent = facts.join(" · ");
    if (finished.error) this.footer.append(element("span", "cand-error", finished.error));
  }
}

/** The last non-blank line of `text` (what the candidate is writing now). */
function lastLine(text) {
  const lines = text.replace(/```(output)?\s*$/, "").split("\n");
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i].trim();
    if (line && line !== "```" && !line.startsWith("```")) return line;
  }
  return "";
}

export function formatCount(count) {
  return Number(count).toLocaleString("en-US");
}
