"""The results contract: what tailaudit's files hold, and how they are written and read back.

At the bottom of the layers (docs/architecture.md) and torch-free: the reports depend on it alone.

- :mod:`audit.contract.model`: the typed results (``AuditResults`` and its sections), dataclasses;
- :mod:`audit.contract.codec`: their JSON codec, driven by the type hints;
- :mod:`audit.contract.schema`: ``results.schema.json`` and ``repair_files.schema.json`` (package data), the
  checks before writing and on reading, and the migration of older files;
- :mod:`audit.contract.jsonfile`: the bounded JSON reader every file tailaudit reads back goes through;
- :mod:`audit.contract.files`: atomic writes, the JSON text, compact confusion matrices, the output folder;
- :mod:`audit.contract.figures`: how stored figures are read (Wilson intervals, rankings, upper bounds).

Grading a file written before verdicts were stored needs the verdict rules, which sit above (``audit.checks.verdict``,
``grade_on_load``); the contract only says that a file needs it (``schema.needs_grading``).
"""
