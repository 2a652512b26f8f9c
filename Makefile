# The two commands a new user needs: `make demo` and `make test` (both set up on first use).
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PACKAGES := manifests generators annotators anchordiff benchmark flows

.PHONY: setup test test-fast lint demo clean mutants deploy

setup: $(STAMP)

# Re-runs only when pyproject.toml changes; otherwise `make setup` takes well under a second.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e '.[dev]'
	SAM2_BUILD_CUDA=0 $(PIP) install --no-build-isolation sam2==1.1.0
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check $(PACKAGES) tests scripts

# The whole mutation pass (docs/testing.md; about 19,000 mutants): many hours on 2 cores, resumes where it stopped;
# docs/testing.md shows the seeded sample that fits in an hour or two. Not run in CI.
mutants: setup
	$(VENV)/bin/mutmut run --max-children 2
	$(PY) scripts/mutation_report.py

demo: setup
	$(PY) -m flows.demo

# pools, the gpu limit and the deployments of prefect.yaml against $$PREFECT_API_URL (idempotent)
deploy: setup
	$(VENV)/bin/mcc deploy

clean:
	# stop the demo's Label Studio first: removing its folder under a running server leaves an orphan
	if [ -x $(VENV)/bin/mcc ] && [ -d demo-workdir ]; then $(VENV)/bin/mcc labelstudio stop --workdir demo-workdir; fi
	rm -rf demo-workdir mutants
