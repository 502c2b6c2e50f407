"""The web page at `/` in a real browser: Debian's headless Chromium driven by Playwright, against the real service.

The demo model in vLLM, with the Docker sandbox, solves a problem on the page: the candidate rows, the
code they ran and its output, the vote chart and the answer must be in the DOM, and they must be what
POST /solve answers for the same seed. With SCTIR_SCREENSHOT=path (`make screenshot`) that page is
saved as the README's screenshot. A scripted engine (only the LLM's text; the executor is real) covers
the page's own logic: the API key, Stop, and a stream that ends in an error.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sandbox.executors import LocalExecutor
from service.api.app import create_app
from service.settings import Settings
from tests.support.browser import PageProblems, chromium, require_browser
from tests.support.docker import require_docker
from tests.support.doubles import ScriptedEngine, Switchable, fails
from tests.support.servers import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1280, "height": 900}
# A README example the demo model solves by running code (tests/test_e2e.py checks them all).
PROBLEM, ANSWER = "What is 3272 * 825 + 86?", "2699486"
SAMPLES, STEPS, SEED = 4, 3, 3
SOLVE_TIMEOUT_MS = 300_000  # vLLM on two shared CPU cores


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- the demo model, the Docker sandbox ----------------------------------------------------------


@pytest.fixture(scope="module")
def demo_service(vllm_installed: None, demo_model: Path, vllm_cpu_env: None) -> Iterator[str]:
    """The service as `sctir serve --model models/demo` runs it, in this process (its engine's gauges readable)."""
    require_browser()  # before vLLM spends a minute loading for nothing
    require_docker()
    pool = f"sctir-web-{uuid.uuid4().hex[:8]}"
    # No early stop: which candidates it cancels depends on who finishes first, and the page must show
    # exactly what the JSON answer for the same seed says.
    settings = Settings(model=str(demo_model), sandbox_pool_size=1, sandbox_pool_name=pool, early_stop=False)
    with serve_in_thread(create_app(settings), "/healthz", start_timeout_s=300) as url:
        assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 120), "never ready"
        yield url


def fill_form(page, problem: str, samples: int, steps: int, seed: int | None = None) -> None:
    page.fill("#problem", problem)
    page.fill("#num-samples", str(samples))
    page.fill("#max-steps", str(steps))
    page.fill("#seed", "" if seed is None else str(seed))


def test_the_page_shows_the_demo_model_solving_live(demo_service: str, browser) -> None:
    from playwright.sync_api import expect

    request = {"problem": PROBLEM, "num_samples": SAMPLES, "max_steps": STEPS, "seed": SEED, "return_traces": True}
    response = httpx.post(f"{demo_service}/solve", json=request, timeout=SOLVE_TIMEOUT_MS / 1000)
    assert response.status_code == 200, response.text
    expected = response.json()
    assert expected["answer"] == ANSWER

    page = browser.new_page(viewport=VIEWPORT)
    problems = PageProblems().watch(page)
    page.goto(f"{demo_service}/")
    expect(page).to_have_title("SC-TIR solver")
    page.fill("#problem", "What is $3272 \\times 825$?")
    expect(page.locator("#preview .katex")).to_have_count(1)  # the LaTeX preview, typeset by the vendored KaTeX
    fill_form(page, PROBLEM, SAMPLES, STEPS, SEED)
    page.press("#problem", "Control+Enter")

    # Live: candidates show as running before the result arrives.
    expect(page.locator('#candidates .badge[data-status="running"]').first).to_be_visible(timeout=SOLVE_TIMEOUT_MS)
    expect(page.locator("#run-state")).to_have_text("Done", timeout=SOLVE_TIMEOUT_MS)

    rows = page.locator("#candidates > li.candidate")
    expect(rows).to_have_count(SAMPLES)
    statuses = [rows.nth(i).get_attribute("data-status") for i in range(SAMPLES)]
    assert statuses == [c["status"] for c in expected["candidates"]]
    expect(page.locator("#answer")).to_have_attribute("data-answer", expected["answer"])
    expect(page.locator("#answer .katex")).to_have_count(1)

    bars = page.locator("#vote-chart .vote-row").all()
    votes = {bar.get_attribute("data-answer"): int(bar.locator(".vote-count").inner_text()) for bar in bars}
    assert votes == expected["votes"]
    expect(page.locator("#vote-chart .vote-row.is-leader")).to_have_attribute("data-answer", ANSWER)

    # The winning trace: the code the candidate wrote, and what the sandbox printed for it.
    winner = next(c["index"] for c in expected["candidates"] if c["vote"] == expected["answer"])
    page.click("#winner-link")
    trace = page.locator(f"#candidate-{winner} .trace")
    expect(trace).to_be_visible()
    expect(trace.locator(".code-block").first).to_contain_text("print")
    output = trace.locator('.output-block[data-status="ok"] pre').first
    expect(output).to_have_text(ANSWER)

    usage = expected["usage"]
    expect(page.locator('[data-stat="prompt_tokens"]')).to_have_text(f"{usage['prompt_tokens']:,}")
    expect(page.locator('[data-stat="completion_tokens"]')).to_have_text(f"{usage['completion_tokens']:,}")
    expect(page.locator('[data-stat="seed"]')).to_have_text(str(SEED))
    for stat in ("total_s", "generation_s", "execution_s"):
        assert re.fullmatch(r"\d+(\.\d+)? (ms|s)|\d+ min \d\d s", page.locator(f'[data-stat="{stat}"]').inner_text())
    assert problems.all(demo_service) == []

    if screenshot := os.environ.get("SCTIR_SCREENSHOT"):
        page.wait_for_timeout(2000)  # the scroll to the winner, its highlight and the bars' growth settle
        page.evaluate("window.scrollTo(0, 0)")
        page.mouse.move(VIEWPORT["width"] - 1, VIEWPORT["height"] - 1)  # no hover state in the picture
        page.wait_for_timeout(200)
        page.screenshot(path=ROOT / screenshot)
    page.close()


# -- a scripted engine: the page's own logic -------------------------------------------------------

CODE = "Compute $6 \\times 7$:\n```python\nprint(6*7)\n```\n```output\n"
AFTER = "\nThe answer is $\\boxed{42}$."  # the model writes the newline after the output block
KEY = "the-right-key"


def quick(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    return [CODE, AFTER][min(step, 1)], 0.2


def slow(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    return CODE, 60.0


@pytest.fixture(scope="module")
def script() -> Switchable:
    return Switchable(quick)


@pytest.fixture(scope="module")
def engine(script: Switchable) -> ScriptedEngine:
    return ScriptedEngine(script)


@pytest.fixture(scope="module")
def scripted_service(browser, engine: ScriptedEngine) -> Iterator[str]:
    settings = Settings(api_keys=[KEY], num_samples=2, max_steps=3, early_stop=False, answer_mode="integer")
    with serve_in_thread(create_app(settings, engine=engine, executor=LocalExecutor(concurrency=2)), "/healthz") as url:
        yield url


def test_the_api_key_goes_in_a_bearer_header_and_stays_in_the_tab(
    scripted_service: str, browser, script: Switchable
) -> None:
    from playwright.sync_api import expect

    script.reset()
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    problems = PageProblems().watch(page)
    page.goto(f"{scripted_service}/")
    page.fill("#api-key", "a-wrong-key")
    fill_form(page, "What is 6 times 7?", 3, 3)
    page.click("#solve")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("401")
    expect(page.locator("#error")).to_contain_text("authorization: a valid bearer token is required")
    expect(page.locator("#run-state")).to_have_text("Failed")

    page.fill("#api-key", KEY)
    page.click("#solve")
    expect(page.locator("#run-state")).to_have_text("Done", timeout=30_000)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#answer")).to_have_attribute("data-answer", "42")
    expect(page.locator("#candidates > li.candidate")).to_have_count(3)
    expect(page.locator('#candidates .output-block[data-status="ok"]')).to_have_count(0)  # rows stay closed
    page.click("#toggle-all")
    expect(page.locator('#candidates .output-block[data-status="ok"] pre')).to_have_text(["42"] * 3)
    assert problems.error_responses == [f"401 {scripted_service}/solve"]  # the wrong key's, and no other
    assert problems.page_errors == problems.failed_requests == []

    assert page.evaluate("sessionStorage.getItem('sctir.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0
    page.reload()
    expect(page.locator("#api-key")).to_have_value(KEY)  # the tab keeps it
    other = browser.new_context().new_page()  # another session does not
    other.goto(f"{scripted_service}/")
    expect(other.locator("#api-key")).to_have_value("")
    context.close()
    other.context.close()


def test_stop_hangs_up_and_the_server_cancels_the_candidates(
    scripted_service: str, browser, engine: ScriptedEngine, script: Switchable
) -> None:
    from playwright.sync_api import expect

    script.script = slow
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{scripted_service}/")
    page.fill("#api-key", KEY)
    fill_form(page, "Think for a long time.", 2, 3)
    aborted_before = len(engine.aborted)
    page.keyboard.press("Control+Enter")  # nothing focused: the shortcut is the page's, not the textarea's
    expect(page.locator("#run-state")).to_have_text("Solving")
    assert wait_for(lambda: len(engine.running) == 2, 10), engine.running
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    expect(page.locator("#run-state")).to_have_text("Stopped")
    expect(page.locator('#candidates .badge[data-status="stopped"]')).to_have_count(2)
    expect(page.locator("#solve")).to_be_enabled()
    assert wait_for(lambda: not engine.running and len(engine.aborted) - aborted_before == 2, 10), engine.aborted
    page.close()


def test_a_stream_that_ends_in_an_error_says_so(scripted_service: str, browser, script: Switchable) -> None:
    from playwright.sync_api import expect

    script.script = fails("the engine went away")
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{scripted_service}/")
    page.fill("#api-key", KEY)
    fill_form(page, "What is 6 times 7?", 2, 3)
    page.click("#solve")
    expect(page.locator("#run-state")).to_have_text("Failed", timeout=30_000)
    expect(page.locator("#error")).to_contain_text("503")
    expect(page.locator("#error")).to_contain_text("the engine went away")
    expect(page.locator('#candidates .badge[data-status="failed"]')).to_have_count(2)
    page.close()


def test_the_event_reader_gets_the_same_events_however_the_bytes_are_cut(scripted_service: str, browser) -> None:
    """The page's SSE reader (static/sse.js): CRLF or LF, comments, a UTF-8 character or a CRLF split across reads."""
    stream = ': keep-alive\r\n\r\nevent: step\r\ndata: {"text": "é = 1"}\r\n\r\n'
    stream += 'event: vote\ndata: {"votes": {"7": 2}}\n\n'
    page = browser.new_page()
    page.goto(f"{scripted_service}/")
    seen = page.evaluate(
        """async (text) => {
            const { readEvents } = await import("./static/sse.js");
            const bytes = new TextEncoder().encode(text);
            const outcomes = new Set();
            for (let cut = 0; cut <= bytes.length; cut++) {
                const body = new ReadableStream({
                    start(controller) {
                        controller.enqueue(bytes.slice(0, cut));
                        controller.enqueue(bytes.slice(cut));
                        controller.close();
                    },
                });
                const events = [];
                for await (const event of readEvents(body)) events.push(event);
                outcomes.add(JSON.stringify(events));
            }
            return [...outcomes].map((outcome) => JSON.parse(outcome));
        }""",
        stream,
    )
    assert seen == [[{"event": "step", "data": {"text": "é = 1"}}, {"event": "vote", "data": {"votes": {"7": 2}}}]]
    page.close()


def test_a_trace_reads_as_prose_code_and_output(scripted_service: str, browser) -> None:
    """The page's trace parser (static/trace.js) on the service's trace format, finished and still being written."""
    page = browser.new_page()
    page.goto(f"{scripted_service}/")
    parse = """async (text) => (await import("./static/trace.js")).parseTrace(text)"""
    finished = page.evaluate(parse, CODE + "42\n```" + AFTER)
    assert finished == [
        {"kind": "prose", "text": "Compute $6 \\times 7$:\n", "open": False},
        {"kind": "code", "text": "print(6*7)", "open": False},
        {"kind": "prose", "text": "\n", "open": False},
        {"kind": "output", "text": "42", "open": False},
        {"kind": "prose", "text": AFTER, "open": True},
    ]
    writing = page.evaluate(parse, "Compute:\n```python\nprint(6*")
    assert writing == [
        {"kind": "prose", "text": "Compute:\n", "open": False},
        {"kind": "code", "text": "print(6*", "open": True},
    ]
    page.close()
