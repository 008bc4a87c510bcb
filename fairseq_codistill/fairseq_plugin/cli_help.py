"""``fairseq-train --criterion codistill_ce --help`` that lists our flags.

fairseq's ``--help`` exits on its first parsing pass, before any criterion or task
adds its flags, so a plugin's options never show. When help is asked for with one of
our components selected, we print their flags (from the same dataclasses fairseq
parses) just before fairseq prints its own help.
"""
import argparse
import sys
from typing import List, Optional

from fairseq_codistill.tools.launch import flag_value


def print_plugin_help(argv: Optional[List[str]] = None, out=sys.stdout) -> bool:
    """Print our components' flags if ``argv`` asks for help with one selected."""
    argv = sys.argv[1:] if argv is None else argv
    if not {"-h", "--help"} & set(argv):
        return False
    from fairseq.dataclass.utils import gen_parser_from_dataclass

    from fairseq_codistill.fairseq_plugin.criterion import CodistillCrossEntropyConfig
    from fairseq_codistill.fairseq_plugin.task import CodistillTranslationConfig

    sections = []
    if flag_value(argv, "--criterion") == "codistill_ce":
        sections.append(("criterion codistill_ce (fairseq-codistill)", CodistillCrossEntropyConfig()))
    if flag_value(argv, "--task") == "codistill_translation":
        sections.append(("task codistill_translation (fairseq-codistill; also takes the "
                         "translation task's flags)", CodistillTranslationConfig()))
    if not sections:
        return False
    parser = argparse.ArgumentParser(prog="fairseq-train", add_help=False, usage=argparse.SUPPRESS)
    for title, cfg in sections:
        scratch = argparse.ArgumentParser(add_help=False)
        gen_parser_from_dataclass(scratch, cfg)
        group = parser.add_argument_group(title)
        for action in scratch._actions:
            if action.dest.startswith("codistill_") or action.dest == "label_smoothing":
                group._add_action(action)
    out.write(parser.format_help() + "\n")
    out.flush()
    return True
