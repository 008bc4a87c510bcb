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
    from fairseq_codistill.fairseq_plugin.checkpoints import allow_fairseq_checkpoints

    from fairseq_codistill.fairseq_plugin.bf16 import install_bf16_fix

    allow_fairseq_checkpoints()  # resume and fairseq-generate on torch >= 2.6
    install_bf16_fix()  # fairseq-train --bf16 on a CPU or GPU (fairseq's --bf16 implies --tpu)
    from fairseq_codistill.fairseq_plugin import criterion, task  # noqa: F401  the @register_* decorators
    from fairseq_codistill.fairseq_plugin.cli_help import print_plugin_help

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


# Modules that moved into subpackages (2026-12): an old import path fails, naming the new.
MOVED = {
    "loss": "core.loss", "precision": "core.precision (--bf16 off TPUs: fairseq_plugin.bf16)",
    "averaging": "exchange.averaging", "snapshot": "exchange.snapshot", "storage": "exchange.storage",
    "lease": "exchange.lease", "quantize": "exchange.quantize",
    "task": "fairseq_plugin.task", "criterion": "fairseq_plugin.criterion",
    "checkpoints": "fairseq_plugin.checkpoints", "cli_help": "fairseq_plugin.cli_help",
    "launch": "tools.launch", "report": "tools.report", "study": "tools.study",
    "average": "tools.average", "evaluate": "tools.evaluate", "logs": "tools.logs",
}


class _Moved(importlib.abc.MetaPathFinder):
    """Consulted last: only a path that no longer exists reaches it."""

    def find_spec(self, fullname, path, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in MOVED:
            raise ModuleNotFoundError(f"{fullname} moved to {__name__}.{MOVED[name]}: import it "
                                      "from there (the README's Layout lists the package)", name=fullname)
        return None


sys.meta_path.append(_Moved())
if "fairseq" in sys.modules:
    register()
else:
    sys.meta_path.insert(0, _RegisterAfterFairseq())


def __getattr__(name):
    if name == "Codistillation":  # the public object; torch is imported only here
        from fairseq_codistill.codistillation import Codistillation

        return Codistillation
    if name in MOVED:  # from fairseq_codistill import <an old module>
        raise ImportError(f"{__name__}.{name} moved to {__name__}.{MOVED[name]}: import it from there")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
