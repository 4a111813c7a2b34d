"""Rendering: numbers as text, one table renderer, the report page, compare's output.

Nothing here computes a result: analysis (:mod:`bench.report.analysis`) and the rules of
:mod:`bench.compare` hand over tidy frames and dataclasses, and this module turns them into
terminal text, GitHub Markdown or self-contained HTML.

Tables are written here, once, for the three formats. Markdown stays unpadded (GitHub
renders it the same, and compare's pull-request comment must fit 65,536 characters).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.run.config import Cell

SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
MARKDOWN_LIMIT = 60_000  # GitHub comments hold 65,536 characters

# ----------------------------------------------------------------------------- numbers


def fmt_num(x: float) -> str:
    """Three significant digits (thousands separated, powers of ten as 1.5×10⁻⁵), Unicode minus."""
    if not np.isfinite(x):
        return "n/a"
    a = abs(float(f"{x:.3g}"))
    if a == 0 or 1e-3 <= a < 1e3:
        text = f"{x:.3g}"
    elif 1e3 <= a < 1e6:
        text = f"{x:,.0f}"
    else:
        mant, exp = f"{x:.2e}".split("e")
        text = f"{float(mant):.3g}×10{str(int(exp)).translate(SUPERSCRIPT)}"
    return text.replace("-", "−")


def fmt_pct(p: float) -> str:
    """A share as a percentage that never rounds a non-zero share to 0% or a partial one to 100%."""
    if not np.isfinite(p):
        return "n/a"
    v = 100 * p
    if v in (0, 100) or 1 <= v <= 99:
        return f"{v:.0f}%"
    return f"{math.ceil(v * 10) / 10:g}%" if v < 1 else f"{math.floor(v * 10) / 10:g}%"


def fmt_rate(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:,.0f}"


def plural(k: int, word: str) -> str:
    return f"{k:,} {word}{'' if k == 1 else 's'}"


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ----------------------------------------------------------------------------- tables


def table(df: pd.DataFrame, fmt: str, *, numeric: Iterable[str] = ()) -> str:
    """``df`` (values already text) as a ``"text"``, ``"markdown"`` or ``"html"`` table.

    Columns named in ``numeric`` are right-aligned (Markdown, HTML); text is left-aligned.
    """
    cols = [str(c) for c in df.columns]
    rows = [[str(v) for v in r] for r in df.itertuples(index=False)]
    right = [c in set(numeric) for c in df.columns]
    if fmt == "text":
        widths = [max(len(x) for x in col) for col in zip(cols, *rows, strict=True)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [line.format(*cols).rstrip(), line.format(*("-" * w for w in widths)),
               *(line.format(*r).rstrip() for r in rows)]
        return "\n".join(out)
    if fmt == "markdown":
        def esc(x: str) -> str:
            return x.replace("|", "\\|")

        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        return "\n".join(out + ["| " + " | ".join(esc(x) for x in r) + " |" for r in rows])
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        cls = [' class="num"' if r else "" for r in right]
        body = "".join("<tr>" + "".join(f"<td{k}>{html.escape(v)}</td>" for k, v in zip(cls, r, strict=True))
                       + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    raise ValueError(f"fmt={fmt!r}; accepted: text, markdown, html")


# ----------------------------------------------------------------------------- the report page

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.86em;margin:.8em 0}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td:first-child{white-space:nowrap}
figure{margin:1.2em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:62em}
.note{background:#fff6e0;border-left:4px solid #e69f00;padding:.5em 1em}
.skip{color:#666;font-style:italic}
code{background:#f4f4f4;padding:0 .2em}
"""
TEXT_COLUMNS = ("estimator", "dtype", "", "value")  # left-aligned in the report; the rest is numeric


def page(blocks: list[tuple], fig_dir: Path, dpi: int) -> tuple[str, str]:
    """(Markdown, HTML) of the report's blocks: h1/h2/h3, p, note, ul, table, figure."""
    md, ht = [], []
    for kind, *a in blocks:
        if kind in ("h1", "h2", "h3"):
            md.append("#" * int(kind[1]) + " " + a[0])
            ht.append(f"<{kind}>{html.escape(a[0])}</{kind}>")
        elif kind in ("p", "note"):
            md.append(("> **Note:** " if kind == "note" else "") + a[0])
            ht.append(f"<p class=\"{kind}\">{html.escape(a[0])}</p>")
        elif kind == "ul":
            md.append("\n".join(f"- {i}" for i in a[0]))
            ht.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in a[0]) + "</ul>")
        elif kind == "table":
            numeric = [c for c in a[0].columns if c not in TEXT_COLUMNS]
            md.append(table(a[0], "markdown", numeric=numeric))
            ht.append(table(a[0], "html", numeric=numeric))
        elif kind == "figure":
            spec = a[0]  # a bench.report.plotkit.FigureSpec
            if spec.figure is None:
                text = f"Not drawn: {spec.skipped}"
                md.append(f"*{text}*")
                ht.append(f"<p class=\"skip\">{html.escape(text)}</p>")
                continue
            png = fig_dir / f"{spec.name}.png"
            md.append(f"![{spec.title}](figures/{spec.name}.png)\n\n*{spec.caption}* "
                      f"([SVG](figures/{spec.name}.svg))")
            w, h = (int(round(v * dpi)) for v in spec.figure.get_size_inches())
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            ht.append(f"<figure><img alt=\"{html.escape(spec.title)}\" width=\"{w}\" height=\"{h}\" "
                      f"src=\"data:image/png;base64,{b64}\"><figcaption>{html.escape(spec.caption)}"
                      "</figcaption></figure>")
    title = html.escape(blocks[0][1])
    doc = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n"
           f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(ht) + "\n</body>\n</html>\n")
    return "\n\n".join(md) + "\n", doc


# ----------------------------------------------------------------------------- compare's output

CHANGE_COLUMNS = ["cell", "metric", "baseline", "new", "change", "rule"]


def _changes(changes: list) -> pd.DataFrame:
    return pd.DataFrame([[c.label, c.metric, c.fmt(c.baseline), c.fmt(c.new), c.fmt_change(), c.rule]
                         for c in changes], columns=CHANGE_COLUMNS)


def _others(cells: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[Cell.of(c).label, c["other"]] for c in cells], columns=["cell", "other run"])


def _wide(comp: Any) -> pd.DataFrame:
    """One row per cell, one column per judged metric: 'baseline -> new' with a verdict mark."""
    mark = {"regression": "! ", "improvement": "+ ", "not judged": "? ", "ok": ""}
    long = pd.DataFrame([{"cell": c.label, "metric": c.metric,
                          "text": ("n/a" if _missing(c.baseline) and _missing(c.new) else
                                   f"{mark[c.verdict]}{c.fmt(c.baseline)} -> {c.fmt(c.new)}")}
                         for c in comp.rows])
    order = list(dict.fromkeys(long["cell"]))
    metrics = [m for m in comp.metrics if m in set(long["metric"])]
    wide = long.pivot(index="cell", columns="metric", values="text").reindex(index=order, columns=metrics)
    failed = set(long.loc[long["metric"] == "status", "cell"])
    wide = wide.fillna("").reset_index()
    wide["cell"] = [f"{c} (failed in new)" if c in failed else c for c in wide["cell"]]
    return wide[["cell", *metrics]]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def comparison(comp: Any, fmt: str) -> str:
    """compare's report as ``"table"`` (terminal), ``"markdown"`` (a PR comment) or ``"json"``."""
    if fmt == "json":
        return _comparison_json(comp)
    md = fmt == "markdown"
    sections = [("Regressions", "REGRESSIONS", _changes(comp.regressions)),
                ("Improvements", "IMPROVEMENTS", _changes(comp.improvements)),
                ("Only in the baseline", "ONLY IN BASELINE", _others(comp.only_in_baseline)),
                ("Only in the new run", "ONLY IN NEW", _others(comp.only_in_new))]
    legend = "baseline → new; ! regression, + improvement, ? not judged"
    if md:
        reg = comp.regressions
        verdict = f"**{plural(len(reg), 'regression')}**" if reg else "**no regression**"
        out = [f"### lvm-bench compare: {verdict}", "", comp.summary() + ".", ""]
        out += [f"- {k}: {v}" for k, v in comp.header()]
        out += [f"- note: {n}" for n in comp.notes]
    else:
        out = ["lvm-bench compare", *(f"{k + ':':<10}{v}" for k, v in comp.header()), "", comp.summary()]
        out += [f"note: {n}" for n in comp.notes]
    budget = [MARKDOWN_LIMIT - sum(len(line) + 1 for line in out) - 1000]

    def fit(text: str) -> list[str]:
        lines = text.split("\n")
        if not md:
            return lines
        kept = []
        for line in lines:
            if len(line) + 1 > budget[0]:
                return [*kept, "", f"{len(lines) - len(kept)} more rows left out to fit a comment: "
                                   "see --format json"]
            kept.append(line)
            budget[0] -= len(line) + 1
        return kept

    for md_title, text_title, frame in sections:
        if len(frame):
            head = f"#### {md_title} ({len(frame)})" if md else f"{text_title} ({len(frame)})"
            out += ["", head, *([""] if md else []), *fit(table(frame, "markdown" if md else "text"))]
    if comp.rows:
        wide = table(_wide(comp), "markdown" if md else "text")
        if md:
            out += ["", f"<details><summary>All compared cells ({legend})</summary>", "", *fit(wide),
                    "", "</details>"]
        else:
            out += ["", f"ALL COMPARED CELLS ({comp.n_cells}; {legend})", *fit(wide)]
    return "\n".join(out) + "\n"


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-safe dicts through pandas' writer: NaN and infinities become null."""
    return json.loads(frame.to_json(orient="records")) if len(frame) else []


def _comparison_json(comp: Any) -> str:
    def rows(changes: list) -> list[dict]:
        return _records(pd.DataFrame([{**c.cell, "label": c.label, "metric": c.metric, "baseline": c.baseline,
                                       "new": c.new, "change": c.change, "verdict": c.verdict,
                                       "rule": c.rule, "se": c.se} for c in changes]))

    doc = {"baseline": comp.baseline, "new": comp.new, "se_threshold": comp.se_threshold,
           "k": comp.se_threshold,  # the older name of se_threshold, kept for readers of the JSON
           "throughput_factor": comp.throughput_factor, "hardware_match": comp.hardware_match,
           "hardware_mismatches": comp.hardware_mismatches, "timings_judged": comp.timings_judged,
           "exit_code": comp.exit_code,
           "summary": comp.summary(), "n_cells": comp.n_cells,
           "regressions": rows(comp.regressions), "improvements": rows(comp.improvements),
           "only_in_baseline": _records(pd.DataFrame(comp.only_in_baseline)),
           "only_in_new": _records(pd.DataFrame(comp.only_in_new)),
           "not_measured": comp.not_measured, "notes": comp.notes,
           "hardware": comp.hardware,
           "rows": rows(comp.rows)}
    return json.dumps(doc, indent=2, default=str)
