"""Glacier restores: plan what to restore, request it politely, and track it.

- ``plan``: the archives in waves (headers first, then the pixel archives selected instances need);
- ``requests``: RestoreObject, rate-limited (one token bucket) and idempotent;
- ``status``: each archive's restore state, read by HEAD;
- ``ledger``: every request recorded in a Parquet restore ledger;
- ``batch``: S3 Batch Operations for very large sets.
"""
