// The vote as a bar per answer class, scaled to N (a full bar is every candidate agreeing), so that
// bars only ever grow while candidates finish. Rows are kept per answer and moved, not rebuilt, so
// their widths animate from the previous tally.

import { renderAnswer } from "./math.js";
import { element } from "./trace.js";

export class VoteChart {
  constructor(list, summary, decidedBadge) {
    this.list = list;
    this.summary = summary;
    this.decidedBadge = decidedBadge;
    this.reset(0);
  }

  reset(numSamples) {
    this.numSamples = numSamples;
    this.rows = new Map();
    this.list.replaceChildren();
    this.list.dataset.empty = "true";
    this.decidedBadge.hidden = true;
    this.summary.textContent = numSamples ? `0 of ${numSamples} finished` : "A bar per answer, as candidates finish";
  }

  /** A `vote` event, or the result's final vote. */
  update({ votes, leader, agreement, finished, running, decided }) {
    // Sorted here: JSON objects lose the server's order for integer-like answers ("42" sorts before "7").
    const entries = Object.entries(votes).sort(
      ([a, countA], [b, countB]) => (b === leader) - (a === leader) || countB - countA,
    );
    this.list.dataset.empty = String(entries.length === 0);
    for (const [answer, count] of entries) {
      const isNew = !this.rows.has(answer);
      const row = this.rows.get(answer) ?? this.addRow(answer);
      this.list.append(row.item); // the leader first, then by votes
      if (isNew) row.fill.getBoundingClientRect(); // laid out at 0 first, so the bar grows into place
      row.fill.style.width = `${(100 * count) / Math.max(this.numSamples, 1)}%`;
      row.count.textContent = String(count);
      row.item.classList.toggle("is-leader", answer === leader);
      row.item.setAttribute("aria-label", `${answer}: ${count} vote${count === 1 ? "" : "s"}`);
    }
    const parts = [`${Math.round(agreement * 100)}% agreement`];
    if (finished != null) parts.push(`${finished} of ${this.numSamples} finished`);
    if (running) parts.push(`${running} running`);
    this.summary.textContent = parts.join(" · ");
    this.decidedBadge.hidden = !decided;
    this.list.classList.toggle("is-decided", Boolean(decided));
  }

  addRow(answer) {
    const item = element("li", "vote-row");
    item.dataset.answer = answer;
    const label = element("span", "vote-label");
    renderAnswer(label, answer);
    label.title = answer;
    const track = element("span", "vote-track");
    const fill = element("span", "vote-fill");
    track.append(fill);
    const count = element("span", "vote-count");
    item.append(label, track, count);
    const row = { item, fill, count };
    this.rows.set(answer, row);
    return row;
  }
}
