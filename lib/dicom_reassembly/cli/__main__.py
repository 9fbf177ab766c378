"""``python -m dicom_reassembly.cli``: the same as the ``dicom-reassembly`` console script."""

from .main import main

raise SystemExit(main())
