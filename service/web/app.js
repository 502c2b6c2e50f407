// The page: the form, one streamed POST /solve per Solve, and the events drawn as they come.
// fetch() rather than EventSource: the problem is POSTed and the API key goes in a header.

import { CandidateRow, STATUS_LABELS, formatCount } from "./candidates.js";
import { renderAnswer, renderText } from "./math.js";
import { readEvents } from "./sse.js";
import { formatDuration } from "./trace.js";
import { VoteChart } from "./vote.js";

const KEY_STORAGE = "sctir.apiKey"; // sessionStorage: the key leaves with the tab
const $ = (id) => document.getElementById(id);

const form = $("solve-form");
const problem = $("problem");
const preview = $("preview");
const apiKey = $("api-key");
const solveButton = $("solve");
const stopButton = $("stop");
const runState = $("run-state");
const answer = $("answer");
const answerNote = $("answer-note");
const winnerLink = $("winner-link");
const candidateList = $("candidates");
const candidateCounts = $("candidate-counts");
const toggleAll = $("toggle-all");
const chart = new VoteChart($("vote-chart"), $("vote-summary"), $("decided"));

let run = null; // the solve on screen: {controller, rows, numSamples, started, ended, result}
let drawScheduled = false;

// -- the form ------------------------------------------------------------------------------------

apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
apiKey.addEventListener("input", () => {
  if (apiKey.value) sessionStorage.setItem(KEY_STORAGE, apiKey.value);
  else sessionStorage.removeItem(KEY_STORAGE);
});

if (/Mac|iPhone|iPad/.test(navigator.platform)) {
  for (const mod of document.querySelectorAll("[data-mod]")) mod.textContent = "⌘";
}

let previewTimer = 0;
function updatePreview() {
  const text = problem.value.trim();
  preview.dataset.empty = String(!text);
  renderText(preview, text);
}
problem.addEventListener("input", () => {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(updatePreview, 120);
});

for (const chip of document.querySelectorAll("[data-problem]")) {
  chip.addEventListener("click", () => {
    problem.value = chip.dataset.problem;
    updatePreview();
    problem.focus();
  });
}

// Ctrl/Cmd+Enter solves from anywhere on the page (the problem box, the key field, a button); Escape stops.
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  } else if (event.key === "Escape" && run && !run.ended) {
    stop();
  }
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (run && !run.ended) return;
  if (!problem.value.trim()) {
    problem.setCustomValidity("Type a problem first.");
  } else {
    problem.setCustomValidity("");
  }
  if (!form.reportValidity()) return;
  solve(requestBody());
});
problem.addEventListener("input", () => problem.setCustomValidity(""));

stopButton.addEventListener("click", () => stop());

function requestBody() {
  const body = {
    problem: problem.value,
    num_samples: Number($("num-samples").value),
    max_steps: Number($("max-steps").value),
    stream: true,
    return_traces: true,
  };
  const mode = $("answer-mode").value;
  if (mode) body.answer_mode = mode;
  const seed = $("seed").value.trim();
  if (seed) body.seed = Number(seed);
  return body;
}

// -- one solve -----------------------------------------------------------------------------------

async function solve(body) {
  resetView(body);
  const controller = new AbortController();
  run = { controller, rows: [], numSamples: body.num_samples, maxSteps: body.max_steps, ended: false };
  run.started = performance.now();
  run.clock = setInterval(tick, 100);
  setBusy(true);
  setRunState("queued", "Sending");
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
  if (apiKey.value) headers.Authorization = `Bearer ${apiKey.value}`;
  const current = run;
  let streaming = false;
  try {
    const response = await fetch("solve", { method: "POST", headers, body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) {
      await showHttpError(response);
      return end(current, "failed", "Failed");
    }
    streaming = true;
    setRunState("queued", "Queued");
    for await (const { event, data } of readEvents(response.body)) handle(event, data); // ends after result or error
    if (current.result) return end(current, "done", "Done");
    if (!current.failed) showError("Stream ended", "The server closed the stream before the result.");
    end(current, "failed", "Failed");
  } catch (error) {
    if (error.name === "AbortError") return end(current, "stopped", "Stopped");
    if (streaming) showError("Connection lost", `The stream from the service broke off (${error.message}).`);
    else showError("Service unreachable", `The request did not reach the service (${error.message}).`);
    end(current, "failed", "Failed");
  }
}

function stop() {
  run?.controller.abort(); // the server cancels the candidates when the client goes away
}

function end(current, state, label) {
  if (current !== run || current.ended) return;
  current.ended = true;
  clearInterval(current.clock);
  for (const row of current.rows) row.onStopped();
  setBusy(false);
  setRunState(state, label);
  if (!current.result && state === "stopped") answerNote.textContent = "Stopped before the vote was final.";
  tick();
  scheduleDraw();
}

function handle(event, data) {
  const row = run.rows[data.candidate];
  switch (event) {
    case "start":
      onStart(data);
      break;
    case "step":
      row?.onStep(data);
      break;
    case "execution":
      row?.onExecution(data);
      break;
    case "candidate":
      row?.onFinished(data);
      break;
    case "vote":
      chart.update(data);
      showLeader(data);
      break;
    case "result":
      onResult(data);
      break;
    case "error":
      run.failed = true;
      showError(`Error ${data.status ?? ""}`.trim(), data.message ?? "The solve failed.");
      break;
  }
  scheduleDraw();
}

function onStart(data) {
  run.numSamples = data.num_samples;
  run.maxSteps = data.max_steps;
  run.rows = Array.from({ length: data.num_samples }, (_, index) => new CandidateRow(index, data.max_steps));
  candidateList.replaceChildren(...run.rows.map((row) => row.root));
  $("candidates-empty").hidden = true;
  toggleAll.disabled = false;
  chart.reset(data.num_samples);
  setStat("seed", String(data.seed));
  setStat("queue_s", formatDuration(data.queue_s));
  setStat("request_id", data.request_id);
  setRunState("running", "Solving");
  answerNote.textContent = "Waiting for the first answers…";
  updateCounts();
}

function showLeader(vote) {
  if (vote.leader == null || run.result) return;
  showAnswer(vote.leader, true);
  const count = vote.votes[vote.leader];
  answerNote.textContent = vote.decided
    ? `Decided: ${count} vote${count === 1 ? "" : "s"}, the rest cannot overtake it.`
    : `Leading with ${count} of ${vote.finished} finished (${Math.round(vote.agreement * 100)}% agreement).`;
}

function onResult(result) {
  run.result = result;
  for (const summary of result.candidates) run.rows[summary.index]?.onResult(summary);
  const finished = result.candidates.length || run.numSamples;
  chart.update({
    votes: result.votes,
    leader: result.answer,
    agreement: result.agreement,
    finished,
    running: 0,
    decided: result.answer != null,
  });
  updateCounts();
  if (result.answer == null) {
    answer.replaceChildren(Object.assign(document.createElement("span"), { className: "placeholder", textContent: "No answer" }));
    answer.dataset.answer = "";
    answerNote.textContent = "No candidate gave a valid answer.";
  } else {
    showAnswer(result.answer, false);
    const votes = result.votes[result.answer];
    const notes = [`${votes} of ${finished} votes`, `${Math.round(result.agreement * 100)}% agreement`];
    if (result.stopped_early) notes.push("stopped early");
    if (result.deadline_hit) notes.push("deadline hit");
    answerNote.textContent = notes.join(" · ");
  }
  const winner = run.rows.find((row) => result.answer != null && row.finished?.vote === result.answer);
  for (const row of run.rows) row.markWinner(row === winner);
  if (winner) {
    winnerLink.hidden = false;
    winnerLink.href = `#${winner.root.id}`;
    winnerLink.textContent = `Show the winning trace (candidate #${winner.index + 1})`;
    winnerLink.onclick = (event) => {
      event.preventDefault();
      showCandidate(winner);
    };
  }
  const { timings, usage } = result;
  for (const name of ["total_s", "queue_s", "generation_s", "execution_s"]) setStat(name, formatDuration(timings[name]));
  setStat("prompt_tokens", formatCount(usage.prompt_tokens));
  setStat("completion_tokens", formatCount(usage.completion_tokens));
  setStat("seed", String(result.seed));
  setStat("request_id", result.request_id);
}

function showAnswer(value, provisional) {
  answer.dataset.answer = provisional ? "" : value;
  answer.classList.toggle("provisional", provisional);
  renderAnswer(answer, value, true);
}

function showCandidate(row) {
  row.open();
  const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
  row.root.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
  row.root.classList.remove("flash");
  void row.root.offsetWidth; // restart the highlight animation
  row.root.classList.add("flash");
  row.details.querySelector("summary").focus({ preventScroll: true });
}

toggleAll.addEventListener("click", () => {
  const open = toggleAll.textContent.startsWith("Expand");
  for (const row of run?.rows ?? []) {
    if (open) row.open();
    else row.details.open = false;
  }
  toggleAll.textContent = open ? "Collapse all" : "Expand all";
});

// -- drawing -------------------------------------------------------------------------------------

function scheduleDraw() {
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => {
    drawScheduled = false;
    for (const row of run?.rows ?? []) row.draw();
    if (run) updateCounts();
  });
}

function tick() {
  if (!run || run.result) return;
  setStat("total_s", formatDuration((performance.now() - run.started) / 1000) + (run.ended ? "" : " …"));
}

function updateCounts() {
  const counts = new Map();
  for (const row of run.rows) counts.set(row.status, (counts.get(row.status) ?? 0) + 1);
  const order = Object.keys(STATUS_LABELS);
  candidateCounts.textContent = [...counts]
    .sort(([a], [b]) => order.indexOf(a) - order.indexOf(b))
    .map(([status, count]) => `${count} ${STATUS_LABELS[status].toLowerCase()}`)
    .join(" · ");
}

function resetView(body) {
  hideError();
  candidateList.replaceChildren();
  $("candidates-empty").hidden = false;
  candidateCounts.textContent = "";
  toggleAll.disabled = true;
  toggleAll.textContent = "Expand all";
  chart.reset(body.num_samples);
  answer.replaceChildren(Object.assign(document.createElement("span"), { className: "placeholder", textContent: "—" }));
  answer.dataset.answer = "";
  answer.classList.remove("provisional");
  answerNote.textContent = "Waiting for a solver slot…";
  winnerLink.hidden = true;
  for (const stat of document.querySelectorAll("[data-stat]")) stat.textContent = "—";
}

function setBusy(busy) {
  solveButton.disabled = busy;
  stopButton.disabled = !busy;
  document.body.classList.toggle("is-busy", busy);
}

function setRunState(state, label) {
  runState.dataset.state = state;
  runState.textContent = label;
}

function setStat(name, value) {
  document.querySelector(`[data-stat="${name}"]`).textContent = value;
}

// -- errors --------------------------------------------------------------------------------------

async function showHttpError(response) {
  let message = response.statusText || "The request failed.";
  try {
    const body = await response.json();
    if (body?.message) message = body.message;
  } catch {
    // not JSON: the status text says what there is to say
  }
  if (response.status === 401) {
    message += apiKey.value ? " (check the API key above)." : " (enter an API key above).";
    apiKey.focus();
    apiKey.select();
  }
  const retry = response.headers.get("retry-after");
  if (retry) message += ` Retry in ${retry} s.`;
  showError(`Error ${response.status}`, message);
}

function showError(title, message) {
  $("error-title").textContent = title;
  $("error-message").textContent = message;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

updatePreview();
