# Two entry points, both safe to run on a fresh machine: they build .venv first.
#   make demo   the whole system on this machine: broker, hub, an edge agent on sample footage
#   make test   lint, type-check and run the whole test suite
#   make test-arm64  the agent-only wheel on an emulated arm64 Debian, against an x86 hub
#                    (needs root; the arm64 root is cached in /var/cache/edge-cloud-runtime)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Installed beside the project with --no-deps on every agent install, a device's too (see
# the recipe below and packaging/arm64/emulated-root).
AGENT_NO_DEPS := norfair==2.3.0 filterpy==1.4.5

.PHONY: setup mosquitto chromium promtool checkov arm64-tools demo test test-arm64 bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# norfair (the edge's object tracker) pins numpy < 2 in its metadata only; it runs on
	@# numpy 2 (tests/edge_agent/test_tracking.py). Without --no-deps pip would downgrade
	@# numpy under everything else. filterpy (its Kalman filter) names matplotlib, which
	@# only its plotting helpers import: --no-deps keeps 95 MB off every device. Their real
	@# dependencies (numpy, scipy, rich) are in pyproject's dependencies.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(AGENT_NO_DEPS)
	touch $(STAMP)

# The tests, the demo and the benchmarks start private Mosquitto brokers (2.0, with its
# dynamic security plugin).
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing mosquitto with apt-get"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq mosquitto >/dev/null; \
	else \
		echo "mosquitto is missing: install it with your package manager" \
		     "(dnf install mosquitto, brew install mosquitto, apk add mosquitto)"; exit 1; \
	fi
	@# Authorization is its dynamic security plugin, part of the mosquitto 2.0 package.
	@for f in /usr/lib/*/mosquitto_dynamic_security.so /usr/lib*/mosquitto_dynamic_security.so \
		/usr/lib*/mosquitto/mosquitto_dynamic_security.so \
		/usr/local/lib*/mosquitto_dynamic_security.so; do [ -e "$$f" ] && exit 0; done; \
	echo "mosquitto_dynamic_security.so is missing: install mosquitto 2.0 or later"; exit 1

# The dashboard's browser test drives Debian's chromium (never a downloaded browser).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing chromium with apt-get"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing: install it with your package manager"; exit 1; \
	fi

# The metrics test checks both /metrics with promtool, from Debian's prometheus package
# (only its promtool is used; no Prometheus server is configured or needed).
promtool:
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing prometheus (for promtool) with apt-get"; \
		$$SUDO apt-get update -qq && \
		$$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	else \
		echo "promtool is missing: install Prometheus with your package manager"; exit 1; \
	fi

# test-arm64 runs arm64 binaries under qemu-user in a debootstrap'ed Debian root.
ARM64_PACKAGES := qemu-user-static binfmt-support debootstrap zstd
arm64-tools:
	@missing=$$(for p in $(ARM64_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	done); \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing" $$missing "with apt-get"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "test-arm64: FAILED: needs Debian's $(ARM64_PACKAGES) (apt-get not found)"; exit 1; \
	fi

setup: $(STAMP) mosquitto

demo: setup
	$(BIN)/cloud-hub demo

# checkov (tests/test_k8s_manifests.py) in a virtual environment of its own: its pinned
# dependencies would downgrade several of .venv's (see pyproject's dev extra).
checkov: .venv-checkov/bin/checkov

.venv-checkov/bin/checkov:
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet --disable-pip-version-check 'checkov==3.3.30'

test: setup chromium promtool checkov
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

test-arm64: setup arm64-tools
	AGENT_NO_DEPS='$(AGENT_NO_DEPS)' packaging/arm64/emulated-root test $(BIN)/python

bench: setup
	$(BIN)/python -m bench overhead
	$(BIN)/python -m bench gate
	$(BIN)/python -m bench publish
