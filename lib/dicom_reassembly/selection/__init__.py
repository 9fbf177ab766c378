"""Which instances a run keeps: criteria on DICOM header tags.

- ``criteria``: one compiled ``Criterion`` per rule, and ``first_failure``/``first_failure_json`` to evaluate them
  (what the executors receive: no secret);
- ``spec``: ``CriteriaSpec``, a validated criteria document with its optional ``input_s3_parameters``, loaded with
  ``load_criteria`` (a file, an ``s3://`` object or a Secrets Manager secret).
"""
