# One-word entry points.  Everything they need is installed by scripts/setup.sh.
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup setup-test run test bench check clean

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

run: setup
	.venv/bin/podsight run $(ARGS)

check: setup
	.venv/bin/podsight check

# As root the suite runs as on a fresh host: no tracefs, debugfs or bpffs but
# what podsight's own code mounts (scripts/fresh-mounts.sh).
FRESH := $(if $(filter 0,$(shell id -u)),scripts/fresh-mounts.sh,)

test: setup-test
	$(FRESH) .venv/bin/python -m pytest $(PYTEST_ARGS)

bench: setup-test
	.venv/bin/python bench/run.py $(ARGS)

clean:
	rm -rf build .venv .tools
