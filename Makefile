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
# The driver options are session.local_driver_java_options: C1 only, since C2 does not pay back in a short local job.
SPARK_SUBMIT = $(VENV)/bin/spark-submit --master 'local[2]' \
  --driver-java-options "-XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile=file:$(abspath conf/log4j2.properties)"

.PHONY: setup system-deps demo test test-fast test-spark35 lint bench dist wheelhouse notebook clean prefect-server

$(VENV)/.installed: setup.py requirements-test.txt
	$(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[campaign]" "$(SPARK4)" -r requirements-test.txt
	touch $@

## setup: .venv with the package and spark-submit
setup: $(VENV)/.installed

## system-deps: the Debian tools the tests call (dcmtk, dicom3tools, Orthanc, PostgreSQL, JDBC driver, OpenJPH)
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(DATA)/sample/expected.json: $(VENV)/.installed lib/dicom_reassembly/sample_data.py
	$(PY) -m dicom_reassembly.sample_data $(DATA)/sample --overwrite

## demo: generate the sample delivery, build the manifest, reassemble it, print the summary
demo: setup $(DATA)/sample/expected.json
	rm -rf $(OUT)/demo
	$(SPARK_SUBMIT) jobs/build_manifest.py \
	  --text $(DATA)/sample/text --images $(DATA)/sample/images --manifest $(OUT)/demo/manifest
	$(SPARK_SUBMIT) jobs/reassemble.py \
	  --manifest $(OUT)/demo/manifest --out $(OUT)/demo/dcm --ledger $(OUT)/demo/ledger --config conf/local.json
	@echo "DICOM objects: $(abspath $(OUT)/demo/dcm)"
	@echo "manifest:      $(abspath $(OUT)/demo/manifest)"
	@echo "ledger:        $(abspath $(OUT)/demo/ledger)"

## test: install everything the tests need, then run every test (Spark 4.x, then the Spark tests on 3.5)
test: system-deps setup
	$(PY) -m pytest tests -q
	$(MAKE) test-spark35

test-fast: setup
	$(PY) -m pytest tests -q -m "not e2e"

$(VENV35)/.installed: setup.py
	$(PY_BOOT) -m venv $(VENV35)
	$(VENV35)/bin/python -m pip install -q --upgrade pip
	$(VENV35)/bin/python -m pip install -q -e . "$(SPARK35)" -r requirements-test.txt
	touch $@

## test-spark35: the Spark tests again under pyspark 3.5 (EMR 7's line)
test-spark35: $(VENV35)/.installed
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

## notebook: run the manifest-analysis notebook headless on the demo's outputs and write HTML
notebook: setup
	@test -d $(OUT)/demo/ledger || $(MAKE) demo
	$(PY) notebooks/run_notebook.py notebooks/manifest_analysis.ipynb --html $(OUT)/notebook/manifest_analysis.html

## bench: the benchmark (tar -x, naive baseline, pipeline, lookups, S3 request counts); results in bench/results/
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

## prefect-server: a local Prefect server (SQLite under PREFECT_HOME, Prefect's embedded default) on 127.0.0.1:4200;
## then `PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/dicom-reassembly campaign serve`
prefect-server: setup
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

lint: setup
	$(VENV)/bin/ruff check lib jobs tests emr bench notebooks

clean:
	rm -rf $(OUT) $(DATA) build dist *.egg-info .pytest_cache
