"""`lvm-bench report`: files, findings against cells.csv, byte stability, bad and partial runs."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli import main
from bench.report.figures import FIGURES, MAIN, listed
from bench.report.findings import (
    finding_log_underflow,
    finding_loglik,
    finding_nonfinite,
    finding_prob_underflow,
    finding_rounding,
    findings,
)
from bench.report.page import write_report
from bench.report.render import fmt_num, fmt_pct
from bench.report.sections import SECTIONS, precision, proposal
from bench.run.config import AXIS_DEFAULTS
from bench.run.store import Run, RunError, load_run
from lvm.numerics import dtype_facts

ROOT = Path(__file__).resolve().parents[1]
MAIN_STEMS = tuple(p.stem for p in MAIN)
# what a run with raw estimates and neither autocast nor encoder cells draws, in order
DRAWN = (*MAIN_STEMS, "fig9_theory")


def _tree(root: Path) -> dict[str, bytes]:
    """Every report file under root, relative path -> bytes."""
    names = ["report.md", "report.html", "tables/summary.csv", "tables/summary.md"]
    names += [f"figures/{p.name}" for p in sorted((root / "figures").glob("*"))]
    return {n: (root / n).read_bytes() for n in names}


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory) -> Path:
    """This module's copy of the session's tiny sweep (the report is written into it)."""
    return _copy(tiny_run, tmp_path_factory.mktemp("report-run") / "run")


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    """The report written into the run directory itself (the default --out)."""
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    return run_dir


def test_report_writes_every_file(report):
    for name in ("report.md", "report.html", "tables/summary.csv", "tables/summary.md",
                 "tables/theory_underflow.csv", "tables/theory_lse.csv", "tables/theory_delta.csv"):
        assert (report / name).stat().st_size > 0, name
    for stem in DRAWN:
        png, svg = report / "figures" / f"{stem}.png", report / "figures" / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            w, h = im.size
        assert 400 <= w <= 3000 and 250 <= h <= 4000, (stem, w, h)
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()[:2000], stem


def test_summary_table_matches_cells(report):
    cells = pd.read_csv(report / "cells.csv")
    ok = cells[cells["status"] == "ok"]
    summary = pd.read_csv(report / "tables" / "summary.csv")
    assert set(zip(summary["estimator"], summary["dtype"], strict=True)) == \
        set(zip(ok["estimator"], ok["dtype"], strict=True))
    for r in summary.itertuples():
        g = ok[(ok["estimator"] == r.estimator) & (ok["dtype"] == r.dtype)]
        under = (g["underflow_rate"] * g["n_estimates"]).round().sum() / g["n_estimates"].sum()
        assert r.underflow_rate == pytest.approx(under, rel=1e-5)
        assert r.largest_n == g["n_samples"].max()
        assert r.cells == len(g)
    md = (report / "tables" / "summary.md").read_text()
    assert md.startswith("| estimator | dtype |") and md.count("\n") == len(summary) + 2


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:|figures/)""", page)
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) == len(DRAWN)
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "report.md").read_text()
    for stem in DRAWN:
        assert f"(figures/{stem}.png)" in md


def _pooled(g: pd.DataFrame) -> float:
    return float((g["underflow_rate"] * g["n_estimates"]).round().sum() / g["n_estimates"].sum())


def test_findings_match_cells_csv(report):
    """Recompute each finding's numbers from cells.csv / loglik.csv.gz and find them in the sentence."""
    d = load_run(report)
    cells = pd.read_csv(report / "cells.csv")
    ok = cells[cells["status"] == "ok"]
    texts = [f.sentence for f in findings(d)]
    assert len(texts) >= 6 and all(t.endswith(".") for t in texts)

    f = finding_prob_underflow(d)
    for dt in ("bfloat16", "float32", "float64"):
        g = ok[(ok["estimator"] == "prob_space") & (ok["dtype"] == dt)]
        rate = _pooled(g)
        assert f.numbers[f"{dt}.rate"] == pytest.approx(rate)
        assert f"{fmt_pct(rate)}{' of its estimates' if dt == 'bfloat16' else ''} at {dt}" in f.sentence
        low = min(_pooled(h) for _, h in g.groupby("n_samples"))
        assert f.numbers[f"{dt}.min_over_n"] == pytest.approx(low)
    assert f.numbers["float64.rate"] == 0 and f.numbers["float32.rate"] == 1  # untrained K=2: all terms 0

    f = finding_log_underflow(d)
    log = ok[ok["space"] == "log"]
    n = int(log["n_estimates"].sum())
    assert (log["underflow_rate"] == 0).all()
    assert f.sentence.startswith("Log space never underflowed") and f"{n:,} estimates" in f.sentence

    f = finding_rounding(d)
    for dt in ("bfloat16", "float32"):
        med = ok.loc[(ok["estimator"] == "log_space") & (ok["dtype"] == dt), "rounding_error_mean"].median()
        assert f.numbers[dt] == pytest.approx(med)
        assert f"{fmt_num(med)} nats at {dt}" in f.sentence
    assert f.numbers["bfloat16"] > f.numbers["float32"] > 0

    f = finding_nonfinite(d)
    assert (ok["nonfinite_rate"] == 0).all() and f"{len(ok):,} measured cells" in f.sentence

    ll = pd.read_csv(report / "loglik.csv.gz")["loglik"].to_numpy()
    f = finding_loglik(d)
    below = float(np.mean(ll < dtype_facts("float32").log_min_subnormal))
    assert f.numbers["below_float32"] == pytest.approx(below)
    assert f"{fmt_pct(below)} of the draws lie below the log of float32's smallest positive number (−103.3)" \
        in f.sentence
    assert f"from {fmt_num(ll.min())} to {fmt_num(ll.max())} nats" in f.sentence

    md = (report / "report.md").read_text()
    assert all(f"- {t}" in md for t in texts)


def test_report_is_byte_stable(report, tmp_path):
    """A second report of the same run (via the CLI, elsewhere) is byte-identical."""
    assert main(["report", str(report), "--out", str(tmp_path / "again")]) == 0
    first, second = _tree(report), _tree(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_not_a_run(tmp_path, capsys):
    with pytest.raises(RunError, match="not a run: meta.json is missing"):
        write_report(tmp_path)
    with pytest.raises(RunError, match="no such run directory"):
        write_report(tmp_path / "absent")
    assert main(["report", str(tmp_path)]) == 2
    assert "meta.json is missing" in capsys.readouterr().err


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("parts", "figures", "tables", "report.*"))
    return dest


def _meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (path / "meta.json").write_text(json.dumps(meta))


def test_partial_run_reports_what_is_missing(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "partial")
    for f in ("raw.parquet", "raw.csv.gz"):  # the raw file is raw.csv.gz without pyarrow
        (run / f).unlink(missing_ok=True)
    (run / "loglik.csv.gz").unlink()
    (run / "k2.npz").unlink()
    cells = pd.read_csv(run / "cells.csv")
    cells[cells["n_samples"] != 100].to_csv(run / "cells.csv", index=False)
    _meta(run, status="interrupted", format_version=None)
    write_report(run)
    md = (run / "report.md").read_text()
    assert "**Note:** This run is incomplete" in md
    assert "loglik.csv.gz is missing" in md and "Not drawn: the run has no loglik.csv.gz" in md
    assert "raw.parquet or raw.csv.gz) is missing" in md
    assert "status is 'interrupted'" in md
    n_lost = int((cells["n_samples"] == 100).sum())
    assert f"{n_lost} of the {len(cells)} cells of the grid are not in cells.csv" in md
    assert "meta.json has no format_version (an older results format)" in md
    assert "Not drawn: the run has no k2.npz (Figure 7's arrays)" in md
    figs = {p.stem for p in (run / "figures").glob("*.png")}
    assert figs == set(MAIN_STEMS) - {"fig4_loglik", "fig7_k2"}
    assert "Probability space (prob_space)" in md  # the rest is still reported


def test_runs_that_cannot_be_reported(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "nocells")
    (run / "cells.csv").unlink()
    with pytest.raises(RunError, match="cells.csv is missing"):
        write_report(run)
    run = _copy(run_dir, tmp_path / "newer")
    _meta(run, format_version=99)
    with pytest.raises(RunError, match="newer lvm-bench"):
        write_report(run)
    run = _copy(run_dir, tmp_path / "columns")
    pd.DataFrame({"a": [1]}).to_csv(run / "cells.csv", index=False)
    with pytest.raises(RunError, match="lacks the column"):
        write_report(run)


def test_run_with_only_skipped_cells(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "skipped")
    cells = pd.read_csv(run / "cells.csv")
    cells[cells["status"] != "ok"].to_csv(run / "cells.csv", index=False)
    write_report(run)
    md = (run / "report.md").read_text()
    assert "No measured cell" in md and "CUDA is not available" in md
    assert "### Figure 1. Underflow rate against N\n\n*Not drawn: the run has no measured cell.*" in md
    assert not list((run / "figures").glob("*.png"))


def test_figure7_from_damaged_or_incomplete_k2_npz(run_dir, tmp_path):
    """Figure 7 draws k2.npz's arrays; a model without all of them is named, a damaged file reported."""
    run = _copy(run_dir, tmp_path / "k2")
    with np.load(run / "k2.npz") as z:
        arrays = {k: z[k] for k in z.files}
    assert {k.rpartition("/")[0] for k in arrays} == {"untrained-k2"}
    np.savez(run / "k2.npz", **{k: v for k, v in arrays.items() if k != "untrained-k2/hit"})
    write_report(run)
    md = (run / "report.md").read_text()
    assert "Not drawn: untrained-k2: k2.npz lacks its hit" in md
    (run / "k2.npz").write_bytes(b"not a zip")
    write_report(run)
    md = (run / "report.md").read_text()
    assert "Not drawn: k2.npz cannot be read" in md and "k2.npz cannot be read (ValueError)" in md
    assert not (run / "figures" / "fig7_k2.png").exists()


def test_load_keeps_all_rows(report):
    d = load_run(report)
    assert isinstance(d, Run) and len(d.cells) == len(pd.read_csv(report / "cells.csv"))


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (set CHROMIUM or install the chromium package) to render "
                    "report.html headlessly")
    probe = ("<script>window.addEventListener('load',()=>{document.body.setAttribute('data-widths',"
             "[...document.images].map(i=>i.complete?i.naturalWidth:0).join(','))})</script></body>")
    page = (report / "report.html").read_text().replace("</body>", probe)
    (tmp_path / "probe.html").write_text(page)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=5000"]
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *flags, f"--user-data-dir={profile}", "--dump-dom", (tmp_path / "probe.html").as_uri()]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-widths="([^"]*)"', out.stdout)
    assert m, out.stderr[-2000:]
    widths = [int(w) for w in m.group(1).split(",")]
    assert len(widths) == len(DRAWN) and all(w > 300 for w in widths), widths


def test_k_findings_follow_the_cells(tiny_run, tmp_path):
    """The findings along K read the cells at their largest N, per family, in K order."""
    from bench.report.findings import finding_k_bias, finding_k_underflow

    assert finding_k_underflow(load_run(tiny_run)) is None  # one K only: nothing to say along K
    assert finding_k_bias(load_run(tiny_run)) is None
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("parts"))
    cells = pd.read_csv(run_dir / "cells.csv")
    k8 = cells.assign(model="untrained-k8", latent_dim=8, underflow_rate=0.25, mc_bias=-0.5,
                      mc_bias_resolved=1.0)
    pd.concat([k8, cells.assign(mc_bias_resolved=0.0)]).to_csv(run_dir / "cells.csv", index=False)
    run = load_run(run_dir)
    top = cells[(cells.status == "ok") & (cells.n_samples == cells.n_samples.max())
                & (cells.parametrization == "logits")]
    under = finding_k_underflow(run)
    want = top[(top.estimator == "prob_space") & (top.dtype == "float32")].underflow_rate.item()
    assert under.numbers["float32.untrained.k2"] == want and under.numbers["float32.untrained.k8"] == 0.25
    assert under.sentence.index("at K = 2") < under.sentence.index("at K = 8")
    bias = finding_k_bias(run)  # an unresolved bias is named as such, never quoted as a number
    assert bias.numbers == {"untrained.k8": -0.5}
    assert "unresolved at K = 2" in bias.sentence and "at K = 8" in bias.sentence


# ----------------------------------------------------------------------------- the registry


FIGURE_HEADINGS = re.compile(r"^### Figure (\d+)\. (.+)\n\n(?:!\[(.+)\]\(figures/(\w+)\.png\)|\*Not drawn)",
                             re.M)


def _captions(md: str) -> list[tuple[int, str, str | None, str | None]]:
    """(number, heading title, image title, image stem) of every figure of a report.md in order."""
    return [(int(n), t, alt or None, stem or None) for n, t, alt, stem in FIGURE_HEADINGS.findall(md)]


def _check_captions(md: str, run: Run) -> dict[str, int]:
    """Every figure heading of ``md`` numbers the figure below it by its position in the run's
    list, and names that figure's own title; return the numbers by stem."""
    plots = listed(run)
    caps = _captions(md)
    assert [n for n, *_ in caps] == list(range(1, len(plots) + 1))
    for (n, title, alt, stem), plot in zip(caps, plots, strict=True):
        assert title == plot.title and alt in (None, plot.title) and stem in (None, plot.stem), (n, stem)
    return {p.stem: i for i, p in enumerate(plots, 1)}


def test_captions_number_each_image_by_its_own_figure(report):
    """A run without autocast (or encoder) cells lists the main figures and the theory figure: the
    file keeps its name, fig9_theory.png, and the caption above it reads Figure 8, in report.md and
    report.html alike."""
    run = load_run(report)
    assert not (run.cells["precision"] != "cast").any()
    md = (report / "report.md").read_text()
    numbers = _check_captions(md, run)
    assert list(numbers) == list(DRAWN) and numbers["fig9_theory"] == 8
    assert ("### Figure 8. Theory against measurement\n\n"
            "![Theory against measurement](figures/fig9_theory.png)") in md
    page = (report / "report.html").read_text()
    heads = re.findall(r'<h3>Figure (\d+)\. ([^<]+)</h3>\n<figure><img alt="([^"]+)"', page)
    want = [(i, p.title) for i, p in enumerate(listed(run), 1)]
    assert [(int(n), html.unescape(t)) for n, t, _ in heads] == want
    assert all(t == alt for _, t, alt in heads)


@pytest.mark.parametrize(("name", "theory_number"), [("baseline", 9), ("full", 8)])
def test_committed_reports_number_figures_as_the_registry_does(name, theory_number):
    """results/baseline has autocast and encoder cells (ten figures); results/full neither (eight).
    A section's figure is listed where the run has a level of its axis other than the default."""
    root = ROOT / "results" / name
    run = load_run(root)
    numbers = _check_captions((root / "report.md").read_text(), run)
    assert numbers["fig9_theory"] == theory_number
    varied = {axis for axis, first in AXIS_DEFAULTS.items() if (run.cells[axis] != first).any()}
    assert set(numbers) == {p.stem for p in FIGURES if p.compares is None or p.compares in varied}


def test_registry_names_each_section_and_figure_once():
    stems = [p.stem for p in FIGURES]
    assert len(set(stems)) == len(stems) == len(MAIN) + len(SECTIONS)
    assert {s.stem for s in SECTIONS} <= set(stems)
    for s in SECTIONS:
        assert s.plot in FIGURES and (s.compares is None or s.compares in AXIS_DEFAULTS), s.stem
    names = [t.name for s in SECTIONS for t in s.tables]
    assert len(set(names)) == len(names) and "summary" not in names


@pytest.fixture(scope="module")
def baseline() -> Run:
    return load_run(ROOT / "results" / "baseline")


def test_run_at_keeps_the_axes_asked_for_and_narrows_the_rest(baseline):
    ok = baseline.cells[baseline.cells["status"] == "ok"]
    assert baseline.at().equals(baseline.ok)
    assert baseline.at("precision", "proposal").equals(ok)
    for axis, other in (("precision", "proposal"), ("proposal", "precision")):
        cells = baseline.at(axis)
        assert cells[axis].nunique() > 1 and set(cells[other]) == {AXIS_DEFAULTS[other]}
        assert len(cells) == (ok[other] == AXIS_DEFAULTS[other]).sum()
    raw = baseline.at("proposal", frame=baseline.raw)
    assert set(raw["precision"]) == {"cast"} and set(raw["proposal"]) == {"prior", "encoder"}
    with pytest.raises(ValueError, match="likelihood is not an axis with a default level"):
        baseline.at("likelihood")


def test_a_new_axis_is_narrowed_to_its_default_by_its_entry_alone(baseline, monkeypatch):
    """A third axis in AXIS_DEFAULTS: the sections' tables read its default level only, with no
    change to them; cells at another level (here with every metric doubled) change nothing."""
    before = {"precision": precision.table(baseline), "proposal": proposal.table(baseline)}
    cells = baseline.cells.assign(likelihood="bernoulli")
    other = cells.assign(likelihood="gaussian", underflow_rate=cells["underflow_rate"] / 2,
                         ess=cells["ess"] * 2, bias=cells["bias"] * 2)
    monkeypatch.setitem(AXIS_DEFAULTS, "likelihood", "bernoulli")
    run = dataclasses.replace(baseline, cells=pd.concat([cells, other], ignore_index=True))
    assert set(run.at("likelihood")["likelihood"]) == {"bernoulli", "gaussian"}
    assert set(run.at("precision")["likelihood"]) == {"bernoulli"}
    pd.testing.assert_frame_equal(precision.table(run), before["precision"])
    pd.testing.assert_frame_equal(proposal.table(run), before["proposal"])
