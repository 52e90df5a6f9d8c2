# Two commands on a fresh machine: `make run` (install + the default search) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run test test-slow bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(VENV)/bin/effscale search +sweep=quick
	$(VENV)/bin/effscale report results/quick

# The default suite leaves out tests marked slow (multi-minute real-data and cluster fault tests);
# `make test-slow` runs those, and .ci/run runs both.
test: install
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

# Each benchmark prints its ratio and target as its last line (benchmarks/README.md has the figures).
# `make bench BENCH_ARGS=--quick` is a smoke run (a few minutes in all); BENCH=... picks some.
BENCH ?= train_step measure_candidates trial_overhead data_pipeline pruning workers
BENCH_ARGS ?=

bench: install
	@failed=; for b in $(BENCH); do echo "== benchmarks/$$b.py $(BENCH_ARGS)"; \
		$(PY) benchmarks/$$b.py $(BENCH_ARGS) || failed="$$failed $$b"; done; \
		test -z "$$failed" || { echo "benchmarks that did not finish:$$failed" >&2; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache
