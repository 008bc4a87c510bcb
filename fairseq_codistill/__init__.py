"""fairseq-codistill: codistillation as a fairseq ``--user-dir`` plugin.

fairseq imports this package by its folder name and auto-imports only ``tasks/``
and ``models/``, so the registered components are imported here.
"""
from fairseq_codistill.checkpoints import allow_fairseq_checkpoints

allow_fairseq_checkpoints()  # resume and fairseq-generate on torch >= 2.6

from fairseq_codistill import criterion, task  # noqa: E402,F401  register the components
