"""Test data for this project: the deterministic sample deliveries that `make demo` and the tests use, and
(``synthetic``) a large delivery's manifest, ledger and catalogue written straight as Parquet.

Not part of the pipeline: nothing outside ``testing`` imports it.
"""
