# tailaudit: `make demo` and `make test` install what they need first.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install system-deps demo lint test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch is left to the registry's current release (see README, "Installing").
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) system-deps

# Headless Chromium (HTML report tests) and poppler (pdftoppm/pdftotext) from Debian.
system-deps:
	@bash scripts/system_deps.sh

# Audit the bundled digits-LT CNN, repair it with REAT, write the before/after report.
# Every repair setting is the default (budget, learning rate, selection): what a new user gets.
DEMO_FLAGS ?= --dataset digitslt
demo: $(STAMP)
	$(VPY) cli.py audit examples/digits_cnn.onnx $(DEMO_FLAGS) --out $(DEMO_OUT)
	$(VPY) cli.py repair examples/digits_cnn.onnx $(DEMO_FLAGS) --out $(DEMO_OUT)/repair

# ruff (configured in pyproject.toml: pycodestyle + pyflakes); `make test` runs it before pytest.
lint: $(STAMP)
	$(VPY) -m ruff check .

# Every tier (unit, contract, end-to-end); prints the 15 slowest tests. One torch thread per test
# process unless OMP_NUM_THREADS says otherwise: the tests use tiny models, and on two busy cores
# torch's default of two threads made the suite about twice as slow (docs/benchmarks.md).
TEST_THREADS ?= $${OMP_NUM_THREADS:-1}
test: install lint
	OMP_NUM_THREADS=$(TEST_THREADS) $(VPY) -m pytest -q --durations=15 tests

# The fast tiers only (-m "not slow": no whole repairs, torchrun or wheel builds).
test-fast: install
	OMP_NUM_THREADS=$(TEST_THREADS) $(VPY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(VPY) bench/attack_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
