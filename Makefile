# dicom-reassembly: `make demo` and `make test` are the two commands a new machine needs.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV35 := .venv-spark35
SPARK35 := pyspark==3.5.7
APT_PACKAGES := dcmtk dicom3tools orthanc orthanc-dicomweb postgresql libpostgresql-jdbc-java
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

DATA := data
OUT := out

.PHONY: setup system-deps demo test test-fast test-spark35 lint bench dist notebook clean

$(VENV)/.installed: setup.py requirements-test.txt
	$(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . -r requirements-test.txt
	touch $@

## setup: .venv with the package and spark-submit
setup: $(VENV)/.installed

## system-deps: the Debian tools the tests call (dcmtk, dicom3tools, Orthanc, PostgreSQL, JDBC driver)
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(DATA)/sample/expected.json: $(VENV)/.installed lib/dicom_reassembly/sample_data.py
	rm -rf $(DATA)/sample
	$(PY) -m dicom_reassembly.sample_data $(DATA)/sample

## demo: generate the sample delivery, build the manifest, reassemble it, print the summary
demo: setup $(DATA)/sample/expected.json
	rm -rf $(OUT)/demo
	$(VENV)/bin/spark-submit --master 'local[2]' jobs/build_manifest.py \
	  --text $(DATA)/sample/text --images $(DATA)/sample/images --manifest $(OUT)/demo/manifest
	$(VENV)/bin/spark-submit --master 'local[2]' jobs/reassemble.py \
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
	$(VENV35)/bin/python -m pip install -q -e . "$(SPARK35)" "numpy<2.4" pytest==9.2.0 chispa==0.12.0 "moto[server,s3]==5.2.5" hypothesis==6.170.15
	touch $@

## test-spark35: the Spark tests again under pyspark 3.5 (EMR 7's line)
test-spark35: $(VENV35)/.installed
	PYSPARK_PYTHON=$(abspath $(VENV35)/bin/python) PYSPARK_DRIVER_PYTHON=$(abspath $(VENV35)/bin/python) \
	  $(VENV35)/bin/python -m pytest tests -q -m spark

lint: setup
	$(VENV)/bin/ruff check lib jobs tests emr bench

clean:
	rm -rf $(OUT) $(DATA) build dist *.egg-info .pytest_cache
