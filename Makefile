# The two commands of the README: `make serve` and `make test`.
# Both create .venv and install what they need; the first install compiles
# llama-cpp-python, which takes about 5 minutes on 2 cores.

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= backends.yaml
HOST ?= 127.0.0.1
PORT ?= 8000
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test install install-test system-test-deps

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip

# An editable install leaves the package's modules uncompiled, and where Python
# may not write bytecode (PYTHONDONTWRITEBYTECODE, as the systemd unit sets;
# a read-only checkout) every process, every worker and every test's gateway
# would compile all of them again at start: about 0.4 s of CPU each.
install: $(VENV)/bin/python
	$(VENV)/bin/pip install -e '.[embedded]'
	$(VENV)/bin/python -m compileall -q privatai

install-test: $(VENV)/bin/python
	$(VENV)/bin/pip install -e '.[embedded,test]'
	$(VENV)/bin/python -m compileall -q privatai tests bench

# The browser tests drive Debian's chromium, the unit-file test uses
# systemd-analyze, the store tests start a throwaway PostgreSQL server, the
# shared-state and multi-instance tests a throwaway redis-server and nginx;
# none can be fetched by pip.
system-test-deps:
	@if [ ! -x /usr/bin/chromium ] || ! command -v systemd-analyze >/dev/null \
			|| ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
			|| ! command -v redis-server >/dev/null || [ ! -x /usr/sbin/nginx ]; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium systemd postgresql redis-server nginx; fi

serve: install
	$(VENV)/bin/privatai quickstart --config $(CONFIG) --host $(HOST) --port $(PORT)
	$(VENV)/bin/privatai serve --config $(CONFIG) --host $(HOST) --port $(PORT)

test: install-test system-test-deps
	$(VENV)/bin/python -m pytest
