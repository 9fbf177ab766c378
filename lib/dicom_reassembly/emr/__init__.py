"""EMR and EMR Serverless: the two jobs submitted with pure request builders and thin submit/wait functions.

- ``config``: ``conf/emr.json`` validated (``EmrConfig``);
- ``layout``: the ``--work`` layout and the uploads (``WorkLayout``);
- ``requests``: ``build_*`` request dicts, no AWS call;
- ``submit``: ``submit_*`` and ``wait_*``, each taking the boto3 client;
- ``plan``: one whole submission (``build_submission_plan``, ``run_plan``).
"""
