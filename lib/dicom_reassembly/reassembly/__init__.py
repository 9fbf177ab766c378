"""Reassembly: the manifest's members joined on the UID, each instance's fate decided, Part 10 objects written.

- ``plan``: one UID's fate from all its members (``plan_instance``);
- ``transforms``: the run's DataFrame steps (``with_*``);
- ``tasks``: shuffle and task sizing, archives placed on tasks;
- ``reads``: range planning and member reads (``ReadTuning``);
- ``writes``: keys, create-exclusive writes, the writer pool (``WritePolicy``);
- ``forward``: STOW-RS forwarding of written instances;
- ``executor``: ``reassemble_partition``, one task's work (``TaskSettings``);
- ``run``: ``ReassembleRun``, one run end to end;
- ``instance``: one UID or one header/pixel pair through the same rules, without Spark.
"""
