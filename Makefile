# dicom-reassembly: `make demo` and `make test` are the two commands a new machine needs.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV35 := .venv-spark35
SPARK4 := pyspark==4.0.1
SPARK35 := pyspark==3.5.7
# openjph-tools: OpenJPH's HTJ2K encoder, the only one packaged here, makes the HTJ2K payloads tests/test_htj2k.py checks.
APT_PACKAGES := dcmtk dicom3tools orthanc orthanc-dicomweb postgresql libpostgresql-jdbc-java openjph-tools
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

DATA := data
OUT := out
DEMO := $(OUT)/demo
# The venv's spark-submit is conf/venv-spark-submit: Spark settings come from conf/spark-defaults.conf (local[2],
# C1-only JIT) and conf/log4j2.properties, the same for make, a hand run and the tests (tests/conftest.py).
SPARK_SUBMIT := $(VENV)/bin/spark-submit
# make notebook MANIFEST=... LEDGER=... RUN_ID=...: the notebook's inputs (relative paths from the repository root).
MANIFEST ?= $(DEMO)/manifest
LEDGER ?= $(DEMO)/ledger
RUN_ID ?=
# Local paths go to the notebook absolute: its kernel runs in notebooks/ and would resolve them from there.
uri = $(if $(findstring ://,$(1)),$(1),$(abspath $(1)))

.PHONY: setup system-deps demo test test-fast fuzz test-spark35 lint bench dist wheelhouse notebook clean prefect-server

$(VENV)/.installed: setup.py requirements-test.txt
	@echo "setup: creating $(VENV) with the package, pyspark and the test tools (a few minutes, once)"
	@$(PY_BOOT) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e ".[network,campaign]" "$(SPARK4)" -r requirements-test.txt
	@touch $@

# pyspark's own spark-submit works only with the venv activated; ours works either way (see the script).
# Installed after every pip install, which would put pyspark's back.
$(VENV)/.spark-submit: conf/venv-spark-submit $(VENV)/.installed
	@install -m 755 conf/venv-spark-submit $(VENV)/bin/spark-submit
	@touch $@

## setup: .venv with the package and spark-submit
setup: $(VENV)/.installed $(VENV)/.spark-submit

## system-deps: the Debian tools the tests call (dcmtk, dicom3tools, Orthanc, PostgreSQL, JDBC driver, OpenJPH)
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The sample delivery in the partner's layout (data/text, data/images), so `dicom-reassembly uid` needs no flags.
$(DATA)/expected.json: $(VENV)/.installed $(wildcard lib/dicom_reassembly/testing/*.py)
	@# The demo's old layout (data/sample/...) is ours to remove: data/ must hold one delivery.
	@if grep -qs '"generator": "dicom_reassembly.sample_data"' $(DATA)/sample/expected.json; then rm -rf $(DATA)/sample; fi
	@$(PY) -m dicom_reassembly.testing.sample_data $(DATA)

## demo: generate the sample delivery, build the manifest, reassemble it, say what was written and what to try next
demo: setup $(DATA)/expected.json
	@rm -rf $(DEMO)
	@echo "== build_manifest: index every tar member of $(DATA)/text and $(DATA)/images"
	@$(SPARK_SUBMIT) jobs/build_manifest.py --text $(DATA)/text --images $(DATA)/images --manifest $(DEMO)/manifest
	@echo "== reassemble: join headers and pixels on the UID, write Part 10 objects and the ledger"
	@$(SPARK_SUBMIT) jobs/reassemble.py --manifest $(DEMO)/manifest --out $(DEMO)/dcm --ledger $(DEMO)/ledger \
	  --config conf/local.json
	@echo "== written under $(DEMO)/"
	@echo "  dcm/       the Part 10 objects, one <SOPInstanceUID>.dcm per instance"
	@echo "  manifest/  Parquet, one row per tar member: archive, offset, size, UID, key tags"
	@echo "  ledger/    Parquet, one row per outcome, by run_id; ledger_runs/ and ledger_computations/ beside it"
	@echo "  dcm/_computations/series_summary/<SeriesInstanceUID>/: the \"computations\" above, one per series:"
	@echo "             preview.png (the series' middle slice as an image) and summary.json (pixel statistics)"
	@uids="$$($(PY) -m dicom_reassembly.testing.sample_data $(DATA) --pick 3)" && \
	  echo "== three sample UIDs in $(DATA)/text and $(DATA)/images:" && echo "$$uids" && \
	  echo "== next: . .venv/bin/activate && dicom-reassembly uid $$(echo "$$uids" | awk 'NR == 1 {print $$1}')" && \
	  echo "   (README.md, \"Your first ten minutes\")"

## test: install everything the tests need, then run every test (Spark 4.x, then the Spark tests on 3.5)
test: system-deps setup
	$(PY) -m pytest tests -q
	$(MAKE) test-spark35

test-fast: setup
	$(PY) -m pytest tests -q -m "not e2e"

## fuzz: the property-based suite (tests/test_properties.py) with many random examples: FUZZ_EXAMPLES per test
## (default 1000); a failure is kept in .hypothesis/ and replayed first on the next run
fuzz: setup system-deps
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_properties.py -q -m "not spark"

$(VENV35)/.installed: setup.py
	$(PY_BOOT) -m venv $(VENV35)
	$(VENV35)/bin/python -m pip install -q --upgrade pip
	$(VENV35)/bin/python -m pip install -q -e ".[network,campaign]" "$(SPARK35)" -r requirements-test.txt
	touch $@

$(VENV35)/.spark-submit: conf/venv-spark-submit $(VENV35)/.installed
	@install -m 755 conf/venv-spark-submit $(VENV35)/bin/spark-submit
	@touch $@

## test-spark35: the Spark tests again under pyspark 3.5 (EMR 7's line)
test-spark35: $(VENV35)/.installed $(VENV35)/.spark-submit
	PYSPARK_PYTHON=$(abspath $(VENV35)/bin/python) PYSPARK_DRIVER_PYTHON=$(abspath $(VENV35)/bin/python) \
	  $(VENV35)/bin/python -m pytest tests -q -m spark

## dist: the wheel, the --py-files zip and the job scripts, for EMR
dist: setup
	rm -rf dist build
	$(PY) -m pip wheel -q --no-deps -w dist .
	cd lib && $(abspath $(PY)) -m zipfile -c ../dist/dicom_reassembly.zip dicom_reassembly/
	mkdir -p dist/jobs && cp jobs/*.py dist/jobs/ && cp emr/bootstrap.sh dist/
	@ls -l dist

## wheelhouse: runtime dependencies as Linux x86_64 CPython 3.11 wheels, for EMR nodes without internet
wheelhouse: dist
	rm -rf dist/wheelhouse
	$(PY) -m pip download -q --dest dist/wheelhouse --only-binary=:all: \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  --python-version 3.11 --implementation cp --abi cp311 dist/dicom_reassembly-*-py3-none-any.whl

## notebook: run the manifest-analysis notebook headless and write HTML (MANIFEST=, LEDGER=, RUN_ID= choose its inputs)
notebook: setup
	@if [ "$(MANIFEST)" = "$(DEMO)/manifest" ] && [ ! -d $(DEMO)/ledger ]; then $(MAKE) --no-print-directory demo; fi
	@MANIFEST='$(call uri,$(MANIFEST))' LEDGER='$(call uri,$(LEDGER))' RUN_ID='$(RUN_ID)' \
	  $(PY) notebooks/run_notebook.py notebooks/manifest_analysis.ipynb --html $(OUT)/notebook/manifest_analysis.html

## bench: the benchmark (tar -x, naive baseline, pipeline, lookups, S3 request counts); results in bench/results/
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

## prefect-server: a local Prefect server (SQLite under PREFECT_HOME, Prefect's embedded default) on 127.0.0.1:4200;
## then `PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/dicom-reassembly campaign serve`
prefect-server: setup
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

## lint: ruff, and import-linter's layer contracts (pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check lib jobs tests emr bench notebooks
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(OUT) $(DATA) build dist *.egg-info .pytest_cache
