"""The manifest: a Parquet index of every tar member of the delivery, with offsets, UID and key header tags.

- ``listing``: both prefixes listed into archives with a role, and which are new or changed;
- ``index``: the schema, and ``index_archive``, one archive's rows (damage included, with a reason);
- ``spark``: ``build_manifest_df`` (indexing on the executors), ``read_manifest``;
- ``lookup``: one UID's members, from the manifest or by scanning archives, without Spark.
"""
