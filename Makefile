# The targets a newcomer uses. `make demo` and `make test` install what they
# need (Debian packages, .venv) by themselves through scripts/bootstrap.
PY := .venv/bin/python
PYTEST_ARGS ?=
SOAK_ARGS ?=

.PHONY: bootstrap demo test test-fast lint bench soak image clean

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	$(PY) -m lab demo $(DEMO_ARGS)

test: bootstrap
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: bootstrap
	$(PY) -m pytest -q -m "not slow and not qemu" $(PYTEST_ARGS)

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: bootstrap
	$(PY) -m bench.ipam --json
	$(PY) -m bench.cni_routed --json
	$(PY) -m bench.routes --routes 100000 --json
	$(PY) -m bench.rib_ingest --prefixes 100000 --json
	$(PY) -m bench.bgp_ingest --prefixes 100000 --json
	$(PY) -m bench.bgp_ingest --prefixes 10000 --json
	$(PY) -m bench.churn --prefixes 100000 --json
	$(PY) -m bench.convergence --json
	$(PY) -m bench.reflector --clients 200 --prefixes 4000 --json
	$(PY) -m bench.policy --pods 5000 --policies 500 --json
	$(PY) -m bench.failover --json

# the soak of issue 14 (root; 30 min unless SOAK_ARGS="--minutes N"); not part of `make test`
soak: bootstrap
	$(PY) -m tests.soak $(SOAK_ARGS)

# Both images (localhost/meshroute-node, localhost/meshroute-reflector) with
# podman; BASE=docker.io/library/debian:12-slim to build from the public base.
image:
	@docker/build.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
