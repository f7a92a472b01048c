# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create/update .venv first (scripts/bootstrap_env.sh; a second run does not reinstall).
PY := .venv/bin/python
SHELL := /bin/bash

.PHONY: venv test test-slow test-slurm demo lint bench clean-demo

venv:
	@bash scripts/bootstrap_env.sh

# pytest exits 5 when it collects no test, so an empty run fails here instead of passing silently.
test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

# Starts a real single-node Slurm cluster (Debian packages), runs the sbatch scripts, tears it down.
test-slurm: venv
	bash tests/slurm/run_slurm_tests.sh

demo: venv
	$(PY) -m lavila.demo $(DEMO_ARGS)

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) benchmarks/run_all.py

clean-demo:
	rm -rf demo_data demo_output
