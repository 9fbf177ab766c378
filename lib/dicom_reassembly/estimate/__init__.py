"""What a delivery holds and what a run would cost, without Spark.

- ``prices``, ``workload``, ``cost``: the cost model (restore, retrieval, requests, EMR hours, storage);
- ``inputs``, ``analysis``, ``charts``: the manifest-analysis notebook's frames, tables and figures.
"""
