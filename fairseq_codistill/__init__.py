"""fairseq-codistill: codistillation as a fairseq ``--user-dir`` plugin.

fairseq imports this package by its folder name and auto-imports only ``tasks/`` and
``models/``, so the registered components are imported here. They are imported only
when fairseq is already loaded (as it is under ``--user-dir``): the launcher, the
exchange and the vision trainer never pay for, or depend on, importing fairseq.
"""
import sys


def register() -> None:
    """Register ``codistill_ce`` and ``codistill_translation`` with fairseq.

    Needed only by programs that imported this package *before* fairseq and then run
    fairseq in-process; ``--user-dir`` does it by itself.
    """
    from fairseq_codistill.checkpoints import allow_fairseq_checkpoints

    allow_fairseq_checkpoints()  # resume and fairseq-generate on torch >= 2.6
    from fairseq_codistill import criterion, task  # noqa: F401  the @register_* decorators
    from fairseq_codistill.cli_help import print_plugin_help

    print_plugin_help()


if "fairseq" in sys.modules:
    register()
