"""fairseq-codistill: codistillation for any PyTorch loop (``Codistillation``), as a
fairseq ``--user-dir`` plugin, and for Hugging Face's Seq2SeqTrainer.

fairseq imports this package by its folder name and auto-imports only ``tasks/`` and
``models/``, so the registered components are imported here. They are registered with
fairseq once fairseq is loaded, never loading it ourselves: the launcher, the exchange
and the vision trainer neither pay for nor depend on fairseq (nor, the launcher, on torch:
``Codistillation`` is imported on first use).
"""
import importlib.abc
import importlib.util
import sys


def register() -> None:
    """Register ``codistill_ce`` and ``codistill_translation`` with fairseq, and make its
    ``--bf16`` train on a CPU or GPU. Idempotent."""
    from fairseq_codistill.checkpoints import allow_fairseq_checkpoints

    from fairseq_codistill.precision import install_bf16_fix

    allow_fairseq_checkpoints()  # resume and fairseq-generate on torch >= 2.6
    install_bf16_fix()  # fairseq-train --bf16 on a CPU or GPU (fairseq's --bf16 implies --tpu)
    from fairseq_codistill import criterion, task  # noqa: F401  the @register_* decorators
    from fairseq_codistill.cli_help import print_plugin_help

    print_plugin_help()


class _RegisterAfterFairseq(importlib.abc.MetaPathFinder):
    """Runs ``register()`` right after ``fairseq`` is imported, if this package came first
    (fairseq's ``--user-dir`` skips a package that is already imported, so waiting for it
    would leave our components unregistered)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "fairseq":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_fairseq = spec.loader.exec_module

            def exec_module(module):
                exec_fairseq(module)
                register()

            spec.loader.exec_module = exec_module
        return spec


if "fairseq" in sys.modules:
    register()
else:
    sys.meta_path.insert(0, _RegisterAfterFairseq())


def __getattr__(name):
    if name == "Codistillation":  # the public object; torch is imported only here
        from fairseq_codistill.codistillation import Codistillation

        return Codistillation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
