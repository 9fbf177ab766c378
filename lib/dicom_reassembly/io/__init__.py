"""Bytes in and out: local paths and S3 behind one small API, tar archives, Parquet through Arrow.

- ``uris``: the location grammar (``is_s3``, ``split_s3``, ``join_uri``);
- ``clients``: ``S3Settings``, ``ArchiveAccess`` (input credentials, for the input bucket only), cached boto3
  clients, S3 errors made ours;
- ``reads``: ``open_read`` (one GET per range), ``read_range``, ``read_bytes``, ``io_counter``;
- ``listing``: ``list_objects``, ``head``, ``count_objects`` (``ObjectInfo``);
- ``writes``: ``write_parts`` (atomic, create-exclusive on request), ``write_bytes``, ``delete``;
- ``tar_access``: members of a tar archive from its headers alone, and member reads;
- ``tar_sources``: the walker's byte sources (one stream, a seekable local file, ranged S3 reads);
- ``arrow_io``: Parquet datasets (the manifest, ledgers) through pyarrow, local or on S3;
- ``json_document``: JSON files read within a size and nesting bound;
- ``secret_store``: documents kept in AWS Secrets Manager;
- ``throttle``: the token bucket every request rate goes through.

Nothing here knows DICOM.
"""
