"""The README stays true: every setting documented, the set-up commands exist."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    for name in Settings.model_fields:
        row = f"| `SCTIR_{name.upper()}` | `--{name.replace('_', '-')}` |"
        assert row in README, f"README lacks the settings row of {name}"


def test_setup_commands_are_make_targets_and_ci_runs_the_test_one() -> None:
    makefile = (ROOT / "Makefile").read_text()
    quick_start = README.split("## Quick start", 1)[1]
    first_block = quick_start.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "serve"], ["make", "test"]]
    assert "\nserve:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
