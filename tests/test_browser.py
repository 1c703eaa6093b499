"""The live page in a real browser: headless Chromium (Debian's `chromium` +
`chromium-driver`, installed by `make install`) driven by Selenium against `seer serve` on a
tiny run. Submits a prompt, waits for the stream to end, checks the coloured tokens, the
final explanation and the monitor's mark, and saves a screenshot."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="Selenium (the serve extra): pip install -e '.[serve]'"
)
from conftest import PROMPT, embedded_run, make_explainer  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from seer.inference.explainer import Explainer  # noqa: E402
from seer.inference.serve.app import create_app  # noqa: E402
from seer.inference.serve.server import running  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,900",
]


def _executables() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "headless Chromium not found: run `make browser` (as root: apt-get install chromium "
            "chromium-driver) to enable the browser test"
        )
    return browser, driver


@pytest.fixture
def browser():
    binary, driver_path = _executables()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="seer-chromium-")
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def coloured_run(tmp_path_factory, trained_run):
    """The tiny run with its `none` threshold lowered, so that every token gets a concept."""
    run = trained_run
    copy = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "seer.json").read_text())
    meta["calibration"]["threshold"] = -1.0
    (copy / "seer.json").write_text(json.dumps(meta))
    return copy


def submit(driver, url: str, prompt: str, monitor: dict | None = None, timeout: float = 120):
    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#monitor-concept option"))
    driver.find_element(By.ID, "prompt").send_keys(prompt)
    max_tokens = driver.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("24")
    if monitor:
        Select(driver.find_element(By.ID, "monitor-mode")).select_by_value(monitor["mode"])
        Select(driver.find_element(By.ID, "monitor-concept")).select_by_value(monitor["concept"])
        threshold = driver.find_element(By.ID, "monitor-threshold")
        threshold.clear()
        threshold.send_keys(str(monitor["threshold"]))
    driver.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")


def test_page_streams_coloured_tokens_and_the_final_explanation(
    browser, coloured_run, tokenizer, tmp_path
):
    app = create_app(make_explainer(coloured_run, tokenizer).engine, model_id="tiny")
    with running(app) as url:
        submit(browser, url, PROMPT, {"mode": "watch", "concept": "space", "threshold": 0.01})
        assert not browser.find_elements(By.ID, "error")
        tokens = browser.find_elements(By.CSS_SELECTOR, "#reply .tok")
        assert len(tokens) >= 2  # the prompt's end and generated tokens
        tops = {t.get_attribute("data-top") for t in tokens}
        assert tops <= {"cooking", "space", "sports"}  # threshold -1: nothing is `none`
        assert all(
            t.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)" for t in tokens
        )
        bars = browser.find_elements(By.CSS_SELECTOR, "#final-explanation .bar")
        assert sorted(b.get_attribute("data-concept") for b in bars) == [
            "cooking",
            "space",
            "sports",
        ]
        assert browser.find_element(By.ID, "final-top").text.startswith("top concept: ")
        mark = browser.find_element(By.ID, "monitor-mark")
        assert "space" in mark.text and "would act" in mark.text
        tokens[1].click()  # hovering shows every concept's probability
        from selenium.webdriver import ActionChains

        ActionChains(browser).move_to_element(tokens[1]).perform()
        tip = browser.find_element(By.CSS_SELECTOR, ".tip")
        assert all(c in tip.text for c in ("cooking", "space", "sports"))
        shot = tmp_path / "serve_page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_page_marks_a_stop_and_shows_the_refusal(browser, coloured_run, tokenizer):
    app = create_app(make_explainer(coloured_run, tokenizer).engine, model_id="tiny")
    with running(app) as url:
        for concept in (
            "cooking",
            "space",
            "sports",
        ):  # the top one is >= 1/3 > 0.3 at the prompt end
            submit(browser, url, PROMPT, {"mode": "stop", "concept": concept, "threshold": 0.3})
            if browser.find_elements(By.ID, "refusal"):
                break
        refusal = browser.find_element(By.ID, "refusal")
        assert "sorry" in refusal.text
        assert "stopped" in browser.find_element(By.ID, "monitor-mark").text
        assert "finish_reason monitor" in browser.find_element(By.ID, "status").text


@pytest.mark.slow
def test_page_on_the_embedded_model(browser, tmp_path_factory, tmp_path):
    """The README's screenshot: SEER_SCREENSHOT=docs/figures/serve_page.png writes it there."""
    run = embedded_run(tmp_path_factory)
    explainer = Explainer.from_run(run)
    assert explainer.concepts == ["cooking", "space", "sports"]
    app = create_app(explainer.engine, model_id="smolLM2-135M-seer")
    with running(app) as url:
        browser.set_window_size(1100, 1000)
        submit(
            browser,
            url,
            "What is a quick recipe for tomato soup?",
            {"mode": "watch", "concept": "cooking", "threshold": 0.5},
        )
        assert not browser.find_elements(By.ID, "error")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#reply .tok")) >= 10
        assert len(browser.find_elements(By.CSS_SELECTOR, "#final-explanation .bar")) >= 2
        shot = Path(os.environ.get("SEER_SCREENSHOT", tmp_path / "serve_page.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


@pytest.mark.slow
def test_page_on_the_vllm_backend(browser, tmp_path_factory):
    """The same page, served by ``seer serve --backend vllm`` (skipped without seer[vllm])."""
    from conftest import require_vllm, tiny_vllm_run

    from seer.inference.engine import Engine
    from seer.inference.loaded import LoadedRun

    require_vllm()
    from seer.inference.backends.vllm import VllmBackend

    loaded = LoadedRun.from_run(tiny_vllm_run(tmp_path_factory.getbasetemp() / "vllm-tiny"))
    app = create_app(Engine(loaded, VllmBackend(loaded, max_num_seqs=8)), model_id="tiny-vllm")
    with running(app) as url:
        submit(browser, url, PROMPT, {"mode": "watch", "concept": "space", "threshold": 0.01})
        assert not browser.find_elements(By.ID, "error")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#reply .tok")) >= 2
        bars = browser.find_elements(By.CSS_SELECTOR, "#final-explanation .bar")
        assert len(bars) == len(loaded.concepts)
        assert browser.find_element(By.ID, "final-top").text.startswith("top concept: ")
