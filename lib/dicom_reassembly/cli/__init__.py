"""The ``dicom-reassembly`` command line: ``main`` and one module per command.

``instance`` (uid, pair), ``inspect``, ``stow``, ``restore``, ``cost``, ``listen``, ``serve`` (and ``token``),
``campaign``. Each command module registers its parser and turns arguments into library calls; the work is in the
library packages. Nothing in the library imports this package.
"""
