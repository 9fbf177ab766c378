"""What a delivery holds and what a run would cost, without Spark.

- ``prices``, ``workload``, ``phases``, ``cost``: the cost model (restore, retrieval, requests, EMR hours per phase,
  storage);
- the manifest-analysis notebook: ``engine`` (DuckDB in process, or Spark), ``inputs`` (the manifest, a ledger run
  and the catalogue registered there), ``analysis``, ``demographics`` and ``outputs`` (tables aggregated in the
  engine), ``histograms`` (bins counted in the engine) and ``charts`` (figures of those aggregates).
"""
