"""The benchmark harness behind ``make bench``: a synthetic delivery, baselines, the pipeline, and a report.

It lives outside the test suite and never asserts on time; ``bench/run.py`` is the entry point.
"""
