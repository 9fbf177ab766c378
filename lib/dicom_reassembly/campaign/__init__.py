"""The campaign: a Prefect flow that drives restore waves, indexing and reassembly over days, and its status.

The flow only sequences: every step is one of our commands or jobs, testable alone (restore planning and
requests from ``restore``, ``jobs/build_manifest.py`` and ``jobs/reassemble.py`` by spark-submit or as EMR
steps). Its state of record is our data under ``work`` (manifest, ledger, runs table, restore ledger), not
Prefect's database, so a flow started again picks up from the data.

- ``params``: the flow's parameters, validated; the input credentials kept out of reprs and pickles;
- ``layout``: where each dataset lives under ``work``;
- ``channel``: how the input credentials reach a Spark job (never its arguments, its settings or ``work``);
- ``jobs``: one job run, by local spark-submit or as an EMR step / EMR Serverless job run;
- ``steps``: each step as a small idempotent function;
- ``flow``: the Prefect flow ``dicom-reassembly-campaign`` and its tasks;
- ``status``: where a campaign stands, from ``work`` alone;
- ``command``: ``dicom-reassembly campaign serve|run|status``.
"""

FLOW_NAME = "dicom-reassembly-campaign"
DEPLOYMENT_NAME = "default"
