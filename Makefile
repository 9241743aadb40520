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

# every benchmark, one after another; the run is kept in bench/results/
bench: bootstrap
	$(PY) -m bench

# the soak of issue 14 (root; 30 min unless SOAK_ARGS="--minutes N"); not part of `make test`
soak: bootstrap
	$(PY) -m tests.soak $(SOAK_ARGS)

# Both images (localhost/meshroute-node, localhost/meshroute-reflector) with
# podman; BASE=docker.io/library/debian:12-slim to build from the public base.
image:
	@docker/build.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info build bgpd/bfd/_engine.*.so
