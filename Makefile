# Two entry points for a newcomer: `make test` and `make study`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: test study study-standard venv bench clean mutate mutate-fast

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The main job: every claim of the quick profile (at most 15 minutes on 2 cores; its verdicts are indicative);
# rerunning resumes from the cache.
study: $(STAMP)
	@echo "normrnn study, quick profile: verdicts are indicative (small models, 3 seeds); make study-standard decides"
	$(PY) -m normrnn study --profile quick --out study-out

# The profile meant to decide: ~128 units, thousands of updates, 5 seeds; at most 90 minutes on 2 cores (2 processes:
# 76 minutes on an idle AMD EPYC pair, 2026-12-05).
study-standard: $(STAMP)
	$(PY) -m normrnn study --profile standard --jobs 2 --out study-standard

# The tests' own check: planted bugs (tools/mutations.py) must each be caught by the tests named for them.
mutate: $(STAMP)
	$(PY) tools/mutate.py --out mutation-report

mutate-fast: $(STAMP)
	$(PY) tools/mutate.py --fast --out mutation-report

bench: $(STAMP)
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) build src/*.egg-info
