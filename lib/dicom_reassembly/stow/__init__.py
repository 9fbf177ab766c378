"""DICOMweb STOW-RS (PS3.18 10.5): sending Part 10 instances to a DICOMweb server.

- ``settings``: ``StowSettings`` (no secret, ships to executors) and ``StowAuth`` (from the environment);
- ``wire``: the streamed multipart body and the per-instance response;
- ``client``: ``StowClient`` and its ``StowBatcher`` (batches bounded by count and bytes, retries);
- ``command``: what the ``stow`` command sends and the Parquet ledger of its results.
"""
