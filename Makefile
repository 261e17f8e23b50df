# Two entry points, both safe to run on a fresh machine: they build .venv first.
#   make demo   the whole system on this machine: broker, hub, an edge agent on sample footage
#   make test   lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup mosquitto chromium demo test bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
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

setup: $(STAMP) mosquitto

demo: setup
	$(BIN)/cloud-hub demo

test: setup chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m bench overhead
	$(BIN)/python -m bench gate
	$(BIN)/python -m bench publish
