"""dicom-reassembly: rebuild Part 10 DICOM objects from split header/pixel tar deliveries."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
