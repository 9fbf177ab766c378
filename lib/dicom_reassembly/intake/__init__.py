"""DICOM intake over the network: ``listen``, a C-STORE SCP feeding the output store, the ledger and the catalogue.

Modules, in the order an instance meets them: ``scp`` (pynetdicom AE and handlers), ``spool`` (create-exclusive
files), ``validation`` (the reassembly's header rules over a Dataset), ``receiver`` (store and record),
``state`` (the SQLite state file), ``forwarder`` (STOW-RS with a bounded queue and retries), ``records``
(ledger and catalogue appends) and ``command`` (the CLI).
"""
