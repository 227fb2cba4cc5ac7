# Two commands matter (see README): `make demo` and `make test`. Everything installs into
# .venv first; Numba's compile cache lives in .cache/numba/<key> so repeated runs skip compiling.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# keyed by the kernels' sources: Numba misses edits to helpers inlined across files (recsys/numba_cache.py)
KERNELS_KEY := $(shell cat $(sort $(wildcard kernels/*.py)) /dev/null | sha1sum | cut -c1-12)
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba/$(KERNELS_KEY)
# CI reruns with a clean tree; the stamp re-installs when pyproject.toml changes.
STAMP := $(VENV)/.installed

.PHONY: demo test protos install lint clean bench audit

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recsys demo --workdir var/demo

test: $(STAMP)
	$(PY) -m pytest -q

protos: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
	  protos/recsys/v1/*.proto

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Known vulnerabilities in the installed dependencies; fails on any finding or on a package
# it cannot audit. Needs PyPI's advisory API; .ci/audit runs it in CI wherever that answers.
audit: $(STAMP)
	$(VENV)/bin/pip-audit --strict --skip-editable

clean:
	rm -rf $(VENV) .cache var
