"""Test data for this project: the deterministic sample deliveries that `make demo` and the tests use.

Not part of the pipeline: nothing outside ``testing`` imports it.
"""
