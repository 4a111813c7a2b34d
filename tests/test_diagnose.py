"""`lvm-bench diagnose`: the verdict table, the recommendation, the --expect gate, bad input."""

from __future__ import annotations

import json
import math

import pytest

from bench.cli import main
from bench.diagnose import diagnose
from lvm.errors import InputError


@pytest.fixture(scope="module")
def result(cache_dir):
    return diagnose("prior-iwae-k2", n_data=8, n_samples=[100], cache_dir=cache_dir)


@pytest.mark.slow
def test_rows_cover_every_setting_and_judge_them(result):
    settings = {r.setting for r in result.rows}
    assert len(settings) == 4 * 4 + 2 * 4  # 4 dtypes x 4 estimators cast, + autocast at float16/bfloat16
    by = {r.setting: r for r in result.rows}
    f64 = by["float64/log_space/cast/prior"]
    assert f64.precise and f64.rounding_error == 0 and f64.mc_se > 0
    assert f64.truth_error is not None and result.truth == "quadrature"  # K = 2: checked against quadrature
    # the prior proposal of a trained decoder at N = 100: ESS ~ 1, so nothing is safe however precise
    assert not f64.reliable and not f64.safe and f64.pareto_k > 0.7 and "lower bound" in f64.why
    p16 = by["float16/prob_space/cast/prior"]
    assert not p16.safe and p16.underflow == 1.0 and "−∞" in p16.why
    assert p16.below_floor > 0.99  # a trained decoder's log p(x|z) lies far below float16's -16.6
    for r in result.rows:  # the rule, restated: safe means precise (no -inf, +inf, NaN, rounding below
        # the MC error) and reliable (the weights of the same draws)
        assert r.precise == (r.underflow == 0 and r.overflow == 0 and r.nan == 0
                             and r.rounding_error < r.mc_se)
        assert r.safe == (r.precise and r.reliable)
    assert result.recommendation is None and "What would help" in result.advice()


def test_the_recommendation_is_the_fastest_safe_setting(cache_dir):
    result = diagnose("untrained-k2", n_data=4, n_samples=[100], dtypes=["float32", "float64"],
                      precisions=["cast"], truth=False, cache_dir=cache_dir)
    rec = result.recommendation
    assert rec is not None and rec.safe and rec.reliable
    assert rec.seconds <= 1.1 * min(r.seconds for r in result.rows if r.safe)
    assert result.advice().startswith(f"Recommendation: {rec.setting}")


@pytest.mark.slow
def test_json_text_and_markdown_forms(result):
    j = result.to_json()
    assert j["recommendation"] is None and len(j["rows"]) == len(result.rows)
    assert json.loads(result.render("json")) == json.loads(json.dumps(j))  # plain JSON
    text = result.render("text")
    assert "Recommendation:" in text and "float16" in text and "NO" in text
    md = result.render("markdown").splitlines()
    assert md[0].startswith("### lvm-bench diagnose: prior-iwae-k2") and md[-1].startswith("Recommendation:")
    table = [line for line in md if line.startswith("|")]
    assert len(table) == 2 + len(result.rows)  # header, rule, one row per setting
    assert "\\|error\\| vs truth" in table[0]  # a | in a column name would split the column
    assert {line.count(" | ") for line in table[2:]} == {table[0].count(" | ")}  # rows as wide as the header
    with pytest.raises(InputError, match="accepted: text, markdown, json"):
        result.render("table")


@pytest.mark.parametrize(("model", "expect", "code"), [
    ("untrained-k2", "float64/log_space/cast", 0), ("untrained-k2", "float16/prob_space/cast", 1),
    ("untrained-k2", "float16/prob_space", 1), ("untrained-k2", "float16/no_such", 2),
    ("prior-iwae-k2", "float64/log_space/cast", 1)])  # precise, but ESS ~ 1: not reliable
def test_expect_is_a_gate(cache_dir, capsys, model, expect, code):
    args = ["diagnose", "--model", model, "--n-data", "4", "--n-samples", "50", "--dtype",
            "float16,float64", "--estimator", "prob_space,log_space", "--precision", "cast",
            "--no-truth", "--cache-dir", cache_dir, "--expect", expect, "--format", "json"]
    assert main(args) == code
    out, err = capsys.readouterr()
    if code == 2:
        assert "not a diagnosed setting" in err
    else:
        rows = json.loads(out)["rows"]
        assert all(math.isfinite(r["mc_se"]) for r in rows) and all(r["truth_error"] is None for r in rows)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "no-such-model-k2"], "model spec 'no-such-model-k2'"),
    (["--model", "untrained-k2", "--dtype", "float8"], "--dtype 'float8'"),
    (["--model", "untrained-k2", "--precision", "half"], "--precision 'half'"),
    (["--model", "untrained-k2", "--n-samples", "0"], "--n-samples=0"),
    (["--model", "untrained-k2", "--n-samples", "ten"], "--n-samples 'ten'"),
    (["--model", "untrained-k2", "--data", "no/such/file.npy"], "no/such/file.npy"),
])
def test_bad_input_exits_2(cache_dir, capsys, args, message):
    assert main(["diagnose", *args, "--cache-dir", cache_dir]) == 2
    assert message in capsys.readouterr().err
