"""What a run leaves on record: nothing lost, nothing silent.

- ``ledger``: one row per outcome (every tar member accounted for), its schema and reason-code columns;
- ``tables``: the runs table, Parquet and PostgreSQL (JDBC) writes, arguments scrubbed of secrets;
- ``computations``: per-series computations over written instances (preview, pixel statistics);
- ``catalog``: the searchable catalogue of stored instances (QIDO's source).
"""
