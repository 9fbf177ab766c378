"""Package definition: the importable library lives in lib/, the console script is dicom-reassembly."""

from setuptools import find_packages, setup

setup(
    name="dicom-reassembly",
    version="0.1.0",
    description="Rebuild Part 10 DICOM objects from split header/pixel tar deliveries, at scale, with Spark.",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.10",
    install_requires=[
        "pydicom>=3.0,<4",
        "numpy>=1.24",
        "boto3>=1.28.57",  # first release honouring AWS_ENDPOINT_URL
        "pyarrow>=12",
        "orjson>=3.9",  # header JSON parsed and hashed 2-5x faster at indexing (dicom_json, where it gives json's result)
        "pylibjpeg>=2.0",
        "pylibjpeg-openjpeg>=2.3",  # decodes J2K/HTJ2K for checks and previews
        "requests>=2.28",  # STOW-RS
        "tqdm>=4.60",  # progress bars in the CLI
        "matplotlib>=3.7",  # series previews, drawn on the executors
        "duckdb>=1.3",  # notebook aggregations, catalogue query/cohort/stats, QIDO-RS (1.3: Python-style lambdas)
    ],
    extras_require={
        "spark": ["pyspark>=3.5,<5"],
        # listen and serve (issue 21): kept off the EMR nodes, which only reassemble.
        "network": [
            "pynetdicom>=2.1",  # the C-STORE SCP of `listen` (event.encoded_dataset needs 2.1)
            "fastapi>=0.110",  # the DICOMweb service of `serve`
            "uvicorn>=0.29",  # its HTTP server
            "pyjwt[crypto]>=2.8",  # per-patient bearer tokens: HS256, and RS256 with cryptography
            "pillow>=10",  # rendered PNG
            "python-multipart>=0.0.18",  # STOW-RS bodies parsed as they stream in
        ],
        # The campaign flow (`dicom-reassembly campaign serve|run`): an extra, so the EMR wheelhouse and the
        # cluster nodes, which only run the Spark jobs, do not carry Prefect's server and its dependencies.
        "campaign": ["prefect>=3.4,<4"],
    },
    entry_points={"console_scripts": ["dicom-reassembly=dicom_reassembly.cli.main:main"]},
)
