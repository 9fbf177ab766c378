"""DICOM without Spark or S3: from a header's JSON model and a pixel payload to a valid Part 10 object.

- ``uids``: UID syntax and the member-name-to-UID rule;
- ``header_rules``: what a header must satisfy before it is written (identity, character sets, limits);
- ``dicom_json``: the DICOM JSON model (PS3.18 Annex F): parsing, key tags, the dataset;
- ``pixels``: classifying a payload (J2K, JP2, HTJ2K, native) and encoding Pixel Data;
- ``fast_encoder``: the byte-for-byte fast path for the header body;
- ``part10``: ``assemble``, the Part 10 object (file meta, dataset, Pixel Data).
"""
