# The project's commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

IMAGE ?= wsgate:dev

.PHONY: venv test lint demo bench image crds e2e clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

lint: venv
	$(BIN)/ruff check .

# The suite in two parts: most tests mostly wait on the processes they start, and run on
# TEST_WORKERS workers (a file each at a time); the tests marked `serial` assert bounds on
# time or memory under a load of their own, and run alone afterwards.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -m "not serial" -n $(TEST_WORKERS) --dist loadfile
	$(BIN)/python -m pytest -m serial

demo: venv
	$(BIN)/python examples/quickstart/demo.py

# bench/relay.py's client and upstream are Node `ws` (bench/node, locked versions) and
# its comparison nginx 1.22 (Debian's); both are installed here when missing.
bench: venv
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	command -v node >/dev/null || (apt-get update && apt-get install -y nodejs npm)
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
		(apt-get update && apt-get install -y nginx)
	npm ci --prefix bench/node --no-audit --no-fund
	$(BIN)/python -m bench.relay
	$(BIN)/python -m bench.auth
	$(BIN)/python -m bench.limits

image:
	docker build -t $(IMAGE) .

crds: venv
	$(BIN)/python -m wsgate_operator.crds crds
	$(BIN)/python docs/reference.py

# A kind cluster (reused if WSGATE_KIND_CLUSTER names one), the image (tagged per build),
# the chart (2 s drain) and the quickstart; then the same client-visible scenarios as the
# operator tier. Without kind, Docker (and its engine), kubectl or Helm it fails at once
# (exit status 2), naming what is missing; `make test` skips tests/e2e instead.
e2e: venv
	bash tests/e2e/setup.sh
	WSGATE_E2E=1 $(BIN)/python -m pytest tests/e2e

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
