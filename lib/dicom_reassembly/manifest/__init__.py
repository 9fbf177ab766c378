"""The manifest: a Parquet index of every tar member of the delivery, with offsets, UID and key header tags.

- ``listing``: both prefixes listed into archives with a role, and which are new or changed;
- ``index``: the schema, and ``index_archive``, one archive's rows (damage included, with a reason), as Arrow batches;
- ``layout``: the files laid out for lookups (hash buckets by UID, sorted, small row groups) and ``read_uid_rows``;
- ``spark``: ``build_manifest_df`` (indexing on the executors), ``write_manifest`` and compaction in that layout,
  ``read_manifest``;
- ``lookup``: one UID's members, from the manifest or by scanning archives, without Spark.
"""
