"""DICOMweb out (and in) over HTTP: ``serve``, a PS3.18 service over the output store and the catalogue, and ``token``.

Modules: ``auth`` (JWT bearer tokens, one FastAPI dependency), ``query`` (QIDO-RS over the catalogue in DuckDB),
``objects`` (streamed objects, metadata, rendered PNG, single tags), ``stow`` (STOW-RS uploads into the intake),
``app`` (the FastAPI app factory) and ``command`` (the CLI).
"""
