"""What a delivery holds and what a run would cost, without Spark.

- ``prices``, ``workload``, ``phases``, ``cost``: the cost model (restore, retrieval, requests, EMR hours per phase,
  storage);
- ``inputs``, ``analysis``, ``charts``: the manifest-analysis notebook's frames, tables and figures.
"""
