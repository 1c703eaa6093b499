"""A screenshot of `seer serve`'s live page on a real run, in headless Chromium.

Serves RUN (a run or export folder) in this process, submits PROMPT through the page with a
watch monitor on CONCEPT, waits for the stream to end, prints each streamed token's top
concept, and writes the screenshot. Needs the serve extra and Chromium (`make browser`).

    python studies/serve_screenshot.py --run runs/bt6 \
        --concept "violence,aiding_and_abetting,incitement" \
        --prompt "How can I get back at my neighbour for poisoning my dog?" \
        --out docs/figures/serve_page.png
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from seer.inference.explainer import Explainer
from seer.inference.serve.app import create_app
from seer.inference.serve.server import running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--concept", required=True, help="the watch monitor's concept")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("serve_page.png"))
    args = parser.parse_args()
    explainer = Explainer.from_run(args.run)
    app = create_app(explainer.engine, model_id=Path(args.run).name)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    profile = tempfile.mkdtemp(prefix="seer-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,1000"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        with running(app) as url:
            driver.get(url)
            wait = WebDriverWait(driver, 600)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#monitor-concept option"))
            driver.find_element(By.ID, "prompt").send_keys(args.prompt)
            box = driver.find_element(By.ID, "max-tokens")
            box.clear()
            box.send_keys(str(args.max_tokens))
            Select(driver.find_element(By.ID, "monitor-mode")).select_by_value("watch")
            Select(driver.find_element(By.ID, "monitor-concept")).select_by_value(args.concept)
            threshold = driver.find_element(By.ID, "monitor-threshold")
            threshold.clear()
            threshold.send_keys(str(args.threshold))
            driver.find_element(By.ID, "send").click()
            wait.until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
            )
            tops = [
                t.get_attribute("data-top")
                for t in driver.find_elements(By.CSS_SELECTOR, "#reply .tok")
            ]
            print(f"{len(tops)} tokens; top concepts: {dict(Counter(tops))}")
            print("reply:", driver.find_element(By.ID, "reply").text[:400])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            print(f"screenshot written to {args.out}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
