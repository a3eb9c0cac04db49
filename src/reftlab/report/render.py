"""A report as one list of sections, each rendered by one Markdown and one HTML renderer.

`write` finds what the runs say (`analyse`), draws the plots, builds the sections (`SECTIONS`, in
order: the title with the counts and caveats, the results with how to read them, the table and
the reference lines, the plots, each method's settings, the settings all runs share, the failed
runs) and writes them as report.md and report.html. A section is a heading and blocks: text,
a table, images, settings; `markdown` and `html` each know how to write every block once.
"""

from __future__ import annotations

import base64
import html as escaping
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..tracking import redact
from . import plots, stats, study, tables
from .runs import caveats, comparable, constant_settings, dedupe, method_settings, test_correct, tidy, varying
from .tables import label, pct, with_interval

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{padding:4px 10px;border-bottom:1px solid #ddd;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}tr.chosen td{font-weight:bold;
background:#eef6ee}.plots img{width:48%;margin:1%;border:1px solid #eee}.note{color:#555;font-size:14px}"""


# --- blocks and sections ------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """Lines of text (Markdown inline: **bold**, `code`): one paragraph in Markdown, one <p> per
    line in HTML. `style`: "" plain, "note" (small print), "caution" (small print, bold)."""

    lines: list[str]
    style: str = ""


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    bold: frozenset[int] = frozenset()  # rows in bold (the chosen group)


@dataclass(frozen=True)
class Images:
    files: list[tuple[str, str]]  # (file, what it shows)


@dataclass(frozen=True)
class Settings:
    values: dict  # setting -> value, one bullet each


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list
    level: int = 2


# --- what the runs say --------------------------------------------------------------------------


@dataclass
class Found:
    """What a report says: the runs (tidied, deduplicated), the group keys and, when some finished,
    the summary table, the choice, the reference group, the reference lines and the plots."""

    title: str
    finished: pd.DataFrame
    failed: pd.DataFrame
    keys: list[str]
    caveats: list[str]
    table: pd.DataFrame | None = None
    chosen: dict | None = None
    reference: int | None = None
    reference_said: list[str] = field(default_factory=list)  # which group it is, and how it was found
    compared: dict | None = (
        None  # group -> its paired difference against the reference (tables.against_reference)
    )
    references: list[tuple[str, float]] = field(default_factory=list)
    plots: list[tuple[str, str]] = field(default_factory=list)  # (file, title), drawn by `write`
    search: object = None  # a search's trials (study.Study), when the runs are one's


def analyse(rows: pd.DataFrame, title: str, others: pd.DataFrame | None, reference: dict | None,
            correct=test_correct) -> Found:  # fmt: skip
    """Tidy, group, deduplicate and summarise MLflow's runs frame (`others`: runs of any experiment
    for the reference lines; `reference`: the group to test against, default the project's, a
    ConfigError where it names no single group; `correct`: a run's per-review correctness)."""
    search = study.of_runs(rows)
    if "tags.pruned" in rows:  # a search's pruned trials are no results: the search section shows them
        rows = rows[rows["tags.pruned"].ne("true")]
    rows = tidy(rows)
    finished_all = rows[rows["status"] == "FINISHED"]
    failed = rows[rows["status"] != "FINISHED"][["run_id", "status", "method", "seed", "error"]]
    keys = varying(finished_all) if len(finished_all) else ["method"]
    finished = dedupe(finished_all, keys)
    found = Found(redact(title), finished, failed, keys, caveats(finished))  # a sweep's name may hold a URL
    found.search = search
    if len(finished):
        found.table = stats.summarise(finished, keys, correct)
        found.chosen = stats.choose(found.table)
        find_reference(found, reference)
        if found.reference is not None:
            found.compared = tables.against_reference(found.table, found.reference, correct)
        found.references = plots.reference_lines(found.table, comparable(others, finished))
    return found


def find_reference(found: Found, reference: dict | None) -> None:
    """The reference group: `--reference`'s (`stats.find_reference`: exactly one group, or a
    ConfigError naming them), else the group with the project's default settings, if one has them."""
    if reference is None:
        found.reference = stats.reference_group(found.table, found.keys, stats.default_settings())
        how = ["the project's default settings"]
    else:
        found.reference, how = stats.find_reference(found.table, found.keys, reference)
        how = ["--reference " + " ".join(f"{k}={v}" for k, v in reference.items()), *how]
    if found.reference is not None:
        found.reference_said = [plots.group_name(found.table.loc[found.reference], found.keys), *how]


def how_to_read(found: Found) -> list[str]:
    table, keys, chosen = found.table, found.keys, found.chosen
    lines = [
        f"Groups: every setting that differs ({', '.join(f'`{k}`' for k in keys)}); seeds (and folds) are averaged. "
        "Test accuracy: mean ± half-width of the 95% confidence interval over them (Student t; its bounds "
        "where it would leave [0, 100]); **†** fewer than 3 of them: the 95% bootstrap interval over the test "
        "reviews instead (the runs' reviews resampled, a fold's once for all of its runs). "
        "Train time: the optimisation steps (mean over seeds); cache pass: the one no-grad pass that "
        "builds the prefix cache (the longest; later jobs of a sweep load it)."
    ]
    if chosen["overall"] is not None:
        row = table.loc[chosen["overall"]]
        what = ", ".join(f"{label(k, keys)}={row[k]}" for k in keys)
        lines.append(
            f"**Chosen on the validation split** (highest mean validation accuracy, {pct(row['val_accuracy'])}): "
            f"{what}; its test accuracy, reported once, is {with_interval(row)}. "
            "The test split played no part in any choice."
        )
    else:
        lines.append("No run has a validation score (data.val_fraction=0): nothing is chosen.")
    if found.reference is not None:
        name, how = found.reference_said[0], "; ".join(found.reference_said[1:])
        lines.append(f"vs reference: the group's test accuracy minus the reference group's (the reference group is "
                     f"{name}: {how}), paired on the same reviews: runs pair by seed and fold where both groups ran "
                     "the same seeds, else each run with every run of the other group on its fold (a TF-IDF run "
                     "serves each seed; column 'paired on'); the 95% interval and p come from a bootstrap over "
                     "the reviews, a fold's drawn once for all of its pairs; p is Holm-adjusted over the "
                     "table's comparisons (* p < 0.05: only then is a difference called significant). Where a "
                     "run has no predictions, Welch's t-test over seeds (marked).")  # fmt: skip
    return lines


# --- the sections, in order ---------------------------------------------------------------------


def intro(found: Found) -> list[Section]:
    blocks = [Text([f"{len(found.finished)} finished runs, {len(found.failed)} failed or unfinished."])]
    blocks += [Text(found.caveats, "caution")] if found.caveats else []
    blocks += [Text(["No finished runs."])] if found.table is None else []
    return [Section(found.title, blocks, level=1)]


def results(found: Found) -> list[Section]:
    if found.table is None:
        return []
    shown = tables.display(found.table, found.keys, found.chosen, found.reference, found.compared)
    bold = frozenset() if found.chosen["overall"] is None else frozenset({found.chosen["overall"]})
    blocks = [Text(how_to_read(found), "note"), Table(shown, bold)]
    if found.references:
        blocks.append(Text([f"Reference lines: {plots.describe(found.references)}."], "note"))
    return [Section("Results", blocks)]


def searched(found: Found) -> list[Section]:
    """A search's own section: its counts, best trial (test once), pictures and Pareto front."""
    if found.search is None:
        return []
    blocks = [Text(study.summary(found.search))]
    if found.search.front is not None and len(found.search.front):
        blocks += [Text(["The Pareto front (no other trial has both a higher validation metric and fewer "
                         "trainable parameters):"], "note"), Table(study.front_table(found.search).reset_index(drop=True))]  # fmt: skip
    blocks += [Images(found.search.plots)] if found.search.plots else []
    return [Section("Search", blocks)]


def figures(found: Found) -> list[Section]:
    if found.table is None:
        return []
    return [Section("Plots", [Images(found.plots)])]


def per_method(found: Found) -> list[Section]:
    if found.table is None:
        return []
    fixed = method_settings(found.finished, found.keys)
    return [Section(f"{method} settings", [Settings(values)]) for method, values in fixed.items()]


def shared(found: Found) -> list[Section]:
    if found.table is None:
        return []
    return [Section("Settings shared by all runs", [Settings(constant_settings(found.finished, found.keys))])]


def failed_runs(found: Found) -> list[Section]:
    block = Table(found.failed) if len(found.failed) else Text(["None."])
    return [Section("Failed or unfinished runs", [block])]


SECTIONS = (intro, searched, results, figures, per_method, shared, failed_runs)


def sections(found: Found) -> list[Section]:
    return [section for make in SECTIONS for section in make(found)]


# --- the renderers ------------------------------------------------------------------------------


def markdown(doc: list[Section]) -> str:
    lines = []
    for section in doc:
        lines += [f"{'#' * section.level} {section.title}", ""]
        for i, block in enumerate(section.blocks):
            lines += ([""] if i else []) + markdown_block(block)
        lines.append("")
    return "\n".join(lines) + "\n"


def markdown_block(block) -> list[str]:
    match block:
        case Text(lines=lines):
            return list(lines)
        case Table(frame=frame, bold=bold):
            return [markdown_table(frame, bold)]
        case Images(files=files):
            return [f"![{alt}]({name})" for name, alt in files]
        case Settings(values=values):
            return [f"- `{k}` = {v}" for k, v in values.items()]
    raise TypeError(f"no Markdown for {block!r}")


def markdown_table(frame: pd.DataFrame, bold: frozenset[int] = frozenset()) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = [str(v) for v in row]
        if i in bold:
            cells = [f"**{c}**" if c and not c.startswith("**") else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html(doc: list[Section]) -> str:
    title = escaping.escape(doc[0].title)
    lines = [f"<html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head><body>"]
    for section in doc:
        lines.append(f"<h{section.level}>{escaping.escape(section.title)}</h{section.level}>")
        for block in section.blocks:
            lines += html_block(block)
    lines.append("</body></html>")
    return "\n".join(lines)


def inline_images(page: str, folder: Path) -> str:
    """The page with each of its images from `folder` inlined (a data: URL): one self-contained file,
    so MLflow's artifact preview (which cannot load sibling files) shows the plots too."""

    def inline(match):
        path = folder / escaping.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        return f"<img src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'"

    return re.sub(r"<img src='([^':]+\.png)'", inline, page)


def html_text(text: str) -> str:
    """Markdown inline text as HTML text: escaped, without the bold marks, `code` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaping.escape(text).replace("**", ""))


def html_block(block) -> list[str]:
    match block:
        case Text(lines=lines, style=""):
            return [f"<p>{html_text(line)}</p>" for line in lines]
        case Text(lines=lines, style="note"):
            return [f"<p class='note'>{html_text(line)}</p>" for line in lines]
        case Text(lines=lines, style="caution"):
            return [f"<p class='note'><b>{html_text(line)}</b></p>" for line in lines]
        case Table(frame=frame, bold=bold):
            return [html_table(frame, bold)]
        case Images(files=files):
            images = [f"<img src='{escaping.escape(n)}' alt='{escaping.escape(alt)}'>" for n, alt in files]
            return ["<div class='plots'>", *images, "</div>"]
        case Settings(values=values):
            items = [
                f"<li><code>{escaping.escape(k)}</code> = {escaping.escape(str(v))}</li>"
                for k, v in values.items()
            ]
            return ["<ul>", *items, "</ul>"]
    raise TypeError(f"no HTML for {block!r}")


def html_table(frame: pd.DataFrame, bold: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{escaping.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = "".join(f"<td>{html_text(str(v))}</td>" for v in row)
        body.append(f"<tr class='chosen'>{cells}</tr>" if i in bold else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --- the report ---------------------------------------------------------------------------------


def write(runs: pd.DataFrame, out: Path, title: str, others: pd.DataFrame | None = None,
          reference: dict | None = None) -> dict:  # fmt: skip
    """Write report.md, report.html and the plots into `out`; returns what was found and chosen. A
    `reference` that names no single group: ConfigError, nothing written."""
    found = analyse(runs, title, others, reference)
    out.mkdir(parents=True, exist_ok=True)
    if found.table is not None:
        found.plots = plots.draw(
            found.table, found.keys, out, found.references, found.compared, found.reference
        )
    if found.search is not None:
        found.search.plots = study.draw(found.search, out)
    doc = sections(found)
    (out / "report.md").write_text(markdown(doc))
    (out / "report.html").write_text(inline_images(html(doc), out))
    result = {"finished": len(found.finished), "failed": len(found.failed), "keys": found.keys,
              "chosen": found.chosen, "table": found.table, "caveats": found.caveats}  # fmt: skip
    if found.table is not None:
        result.update(reference=found.reference, reference_said=found.reference_said,
                      plots=[name for name, _ in found.plots])  # fmt: skip
    return result
