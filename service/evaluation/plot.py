"""report.png: accuracy per seed (maj@N, pass@N, pass@1, with the mean), and agreement versus
correctness (the agreement of right and of wrong answers, and the accuracy per agreement bin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BINS = 10


def write_png(path: Path, manifest: dict[str, Any], summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    try:
        import matplotlib
    except ImportError as error:  # an extra: the server and the JSON and Markdown reports do without it
        raise ImportError("report.png needs matplotlib: pip install 'sctir[eval]' (or -e '.[eval]')") from error
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    n = summary["num_samples"] or "N"
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    seeds = list(summary["per_seed"])
    x = range(len(seeds))
    width = 0.27
    for offset, key, label in ((-width, "maj", f"maj@{n}"), (0, "pass_any", f"pass@{n}"), (width, "pass_1", "pass@1")):
        left.bar([i + offset for i in x], [100 * summary["per_seed"][s][key] for s in seeds], width, label=label)
    mean, std = 100 * summary["maj"]["mean"], 100 * summary["maj"]["std"]
    left.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"maj@{n} mean {mean:.1f} ± {std:.1f}")
    left.set_xticks(list(x), [str(s) for s in seeds])
    left.set(xlabel="seed", ylabel="% of problems", ylim=(0, 130), title=f"{manifest['set']}: accuracy per seed")
    left.set_yticks(range(0, 101, 20))
    left.legend(loc="upper left", ncol=2, fontsize="small")

    answered = [r for r in records if r["answer"] is not None]
    right_agreement = [r["agreement"] for r in answered if r["correct"]]
    wrong_agreement = [r["agreement"] for r in answered if not r["correct"]]
    edges = [i / BINS for i in range(BINS + 1)]
    right.hist(
        [right_agreement, wrong_agreement],
        bins=edges,
        stacked=True,
        color=["tab:green", "tab:red"],
        label=[f"right ({len(right_agreement)})", f"wrong ({len(wrong_agreement)})"],
    )
    right.set(xlabel="agreement (winning votes / valid votes)", ylabel="problem runs", title="agreement vs correctness")
    accuracy = right.twinx()
    centers, rates = [], []
    for lo, hi in zip(edges, edges[1:]):
        inside = [r for r in answered if lo <= r["agreement"] < hi or (hi == 1.0 and r["agreement"] == 1.0)]
        if inside:
            centers.append((lo + hi) / 2)
            rates.append(100 * sum(r["correct"] for r in inside) / len(inside))
    accuracy.plot(centers, rates, "o-", color="black", label="accuracy in bin")
    accuracy.set(ylabel="accuracy in bin (%)", ylim=(0, 105))
    handles = right.get_legend_handles_labels()
    extra = accuracy.get_legend_handles_labels()
    right.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
