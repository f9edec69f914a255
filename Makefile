# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: venv system-deps demo test lint typecheck unit unit-fast plugin benchmark clean

# pip takes torch/torchvision from the local wheel cache where the machine has one; constraints.txt pins
# every transitive version that was tested.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The bundled sample: Landsat 7 over Taizhou, 2000 -> 2003 (6 bands; 3,2,1 = red, green, blue).
demo: $(STAMP)
	mkdir -p $(OUT)
	$(VENV)/bin/mtrs sample $(OUT)/sample
	$(VENV)/bin/mtrs detect $(OUT)/sample/before.tif $(OUT)/sample/after.tif -q "any change" \
		--model cva --min-area 3600 -o $(OUT)/demo_changes.geojson \
		--mask-out $(OUT)/demo_probability.tif --json
	$(VENV)/bin/mtrs detect $(OUT)/sample/before.tif $(OUT)/sample/after.tif \
		-q "new buildings and roads" --bands 3,2,1 --min-area 3600 \
		-o $(OUT)/demo_new_buildings_and_roads.geojson --json
	@echo "Wrote $(OUT)/demo_changes.geojson, $(OUT)/demo_probability.tif, $(OUT)/demo_new_buildings_and_roads.geojson"

lint: $(STAMP)
	$(VENV)/bin/ruff check mtrs_geo models cli tests benchmarks scripts qgis_plugin
	$(VENV)/bin/ruff format --check mtrs_geo models cli tests benchmarks scripts qgis_plugin

typecheck: $(STAMP)
	$(VENV)/bin/mypy mtrs_geo models cli qgis_plugin

unit: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

# For local runs: the suite without the tests marked slow (two-process DDP training, headless
# Chromium, the real QGIS). `make test` (CI) runs every test.
unit-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

system-deps:
	bash scripts/system-deps.sh

test: system-deps lint typecheck unit

# The QGIS plugin zip (Plugin Manager > Install from ZIP): sources, metadata, icon and style only.
DIST ?= dist
plugin:
	python3 scripts/build_plugin.py --output $(DIST)

benchmark: $(STAMP)
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) build dist *.egg-info $(OUT)
