"""The documentation stays true to the code: docs/options.md is what options.py generates,
the README stays short and leads with what a newcomer asks, every relative link resolves,
and the README's first training command reads the data path data-prep writes."""
import re

import pytest

from conftest import REPO
from fairseq_codistill.tools import options_doc, study

README = REPO / "README.md"
PAGES = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
# Written by another tool than the docs' authors: fairseq-codistill-report writes
# Generated: its links are checked by regenerating it (below).
GENERATED_ELSEWHERE = {REPO / "docs" / "study.md"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_options_page_is_what_options_py_generates():
    committed = (REPO / "docs" / "options.md").read_text()
    assert committed == options_doc.render(), \
        "docs/options.md is stale: python -m fairseq_codistill.tools.options_doc --out docs/options.md"
    assert options_doc.main(["--check", str(REPO / "docs" / "options.md")]) == 0


def test_options_page_has_every_option_with_its_default():
    from fairseq_codistill.options import ALL_OPTIONS
    page = options_doc.render()
    for opt in ALL_OPTIONS:
        assert f"### `{opt.flag}`" in page
        assert f"| [`{opt.flag}`](#{opt.flag}) | {options_doc.show_default(opt.default)} |" in page


def test_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_answers_what_install_run_and_whether_within_100_lines():
    headings = [line.lower() for line in README.read_text().splitlines()[:100] if line.startswith("## ")]
    for question in (r"what it is", r"install", r"\brun\b", r"should i use"):
        assert any(re.search(question, h) for h in headings), (question, headings)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces -> -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page) -> set:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if file in GENERATED_ELSEWHERE and not file.exists():
            continue
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: {target}: no heading #{anchor}"


def test_the_first_training_command_reads_what_prepare_iwslt14_writes():
    script = (REPO / "data-prep" / "prepare-iwslt14.sh").read_text()
    out = re.search(r'^OUT=\$\{OUT:-([^}]+)\}', script, re.M).group(1)
    data = re.search(r'DATA=\$OUT(/\S*?)"?$', script, re.M).group(1)
    written = out + data  # data-bin/iwslt14.de-en/bin

    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if re.match(r"\s+(fairseq-codistill-launch|fairseq-train) ", line))
    command = []
    for line in lines[start:]:
        command.append(line)
        if not line.rstrip().endswith("\\"):
            break
    paths = [tok for tok in " ".join(command).split() if tok.startswith("data-bin/")]
    assert paths == [written], (paths, written)


def test_the_study_page_is_what_the_committed_results_generate(tmp_path):
    """docs/study.md is fairseq-codistill-report --study results/study --out docs: every
    number on it comes from a file under results/, and its plots are beside it."""
    text = study.write_study_report(tmp_path, study.load_study(REPO / "results" / "study"))
    assert text == (REPO / "docs" / "study.md").read_text(), (
        "docs/study.md differs from what results/ generates: run "
        "fairseq-codistill-report --study results/study --out docs --readme README.md")
    for name in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (tmp_path / name).is_file() and (REPO / "docs" / name).is_file(), name


def test_the_readmes_which_method_table_is_what_the_committed_results_generate():
    """README.md's table of BLEU at W per scenario and codistillation's verdicts are
    fairseq-codistill-report --study results/study --readme README.md's, not typed."""
    from fairseq_codistill.tools import scenarios
    text = README.read_text()
    block = text[text.index(scenarios.BEGIN):text.index(scenarios.END) + len(scenarios.END)]
    assert block == "\n".join(scenarios.readme_block(study.load_study(REPO / "results" / "study"))), (
        "README.md's which-method block differs from what results/ generates: run "
        "fairseq-codistill-report --study results/study --out docs --readme README.md")


def test_the_readmes_demo_output_is_what_the_kept_demo_run_generates():
    """README.md's example of what make demo prints is the summary of the run kept under
    results/demo, with the machine it ran on, not typed."""
    from fairseq_codistill.tools import report
    runs = [REPO / "results" / "demo" / name for name in ("baseline", "codistill", "control")]
    rows = [report.table_row(s, 2) for run in runs for s in report.load_run(run)]
    text = README.read_text()
    block = text[text.index(report.DEMO_BEGIN) + len(report.DEMO_BEGIN):text.index(report.DEMO_END)]
    assert block == "\n".join(["", *report.demo_block(rows, report.run_envs(runs)), ""]), (
        "README.md's demo block differs from what results/demo generates: run " + report.DEMO_BEGIN.split("generated by ")[1][:-4])
    assert all((run / "env.json").is_file() for run in runs)


def test_benchmarks_page_is_what_the_kept_runs_generate():
    from fairseq_codistill.tools import benchmarks_page
    committed = (REPO / "docs" / "benchmarks.md").read_text()
    assert committed == benchmarks_page.render(), \
        "docs/benchmarks.md is stale: python -m fairseq_codistill.tools.benchmarks_page --out docs/benchmarks.md"
    for kept in sorted((REPO / "results" / "benchmarks").glob("*.txt")):
        assert f"]({'../results/benchmarks/' + kept.name})" in committed


def test_benchmarks_page_shows_each_run_with_its_machine_and_ratios(tmp_path):
    from fairseq_codistill.tools import benchmarks_page
    (tmp_path / "2026-01-02-goodput.txt").write_text(
        "# goodput: tiny transformer\n"
        "time  codistill, straggler   20.93 updates/s\n"
        "machine AMD EPYC (2 cores); torch 2.13.0+cpu\n"
        "ratio goodput_codistill = 0.9047   (straggler / none)   target >= 0.95: MISSED\n"
        "ratio goodput_allreduce = 0.5039   (straggler / none)\n")
    (tmp_path / "2025-06-30-memory.txt").write_text("ratio peer_memory = 0.91   (rss / weights)   target <= 1.05: met\n")
    page = benchmarks_page.render(tmp_path)
    assert page.index("## 2026-01-02: goodput") < page.index("## 2025-06-30: memory")  # newest first
    assert "machine: AMD EPYC (2 cores); torch 2.13.0+cpu." in page
    assert "| `goodput_codistill` | 0.9047 | straggler / none | >= 0.95: MISSED |" in page
    assert "| `goodput_allreduce` | 0.5039 | straggler / none | - |" in page
    assert "| `peer_memory` | 0.91 | rss / weights | <= 1.05: met |" in page
    assert "machine: not recorded." in page
    assert "codistill, straggler   20.93 updates/s" in page
    # the opening table: the newest run of each benchmark, its figures with a target only
    summary = page[:page.index("## 2026-01-02: goodput")]
    assert "| goodput | `goodput_codistill` | 0.9047 | >= 0.95: MISSED | [2026-01-02](../results/benchmarks/2026-01-02-goodput.txt), AMD EPYC (2 cores) |" in summary
    assert "goodput_allreduce" not in summary

    # a labelled run is another benchmark; an older run of the same one leaves the table
    (tmp_path / "2026-01-03-memory-quick.txt").write_text("ratio peer_memory = 1.5   (rss / weights)   target <= 1.05: MISSED\n")
    (tmp_path / "2026-01-01-goodput.txt").write_text("ratio goodput_codistill = 0.97   (straggler / none)   target >= 0.95: met\n")
    page = benchmarks_page.render(tmp_path)
    summary = page[:page.index("## 2026-01-03: memory (quick)")]
    assert "| memory (quick) | `peer_memory` | 1.5 | <= 1.05: MISSED |" in summary
    assert "| memory | `peer_memory` | 0.91 | <= 1.05: met |" in summary
    assert "0.97" not in summary and "| `goodput_codistill` | 0.97 |" in page

    (tmp_path / "goodput.txt").write_text("ratio x = 1\n")
    with pytest.raises(ValueError, match="DATE-SCRIPT.txt"):
        benchmarks_page.render(tmp_path)
    assert benchmarks_page.main(["--results", str(tmp_path), "--check", str(tmp_path / "page.md")]) == 2
