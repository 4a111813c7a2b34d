"""The roofline arithmetic: FLOP of an estimate, its matrix-product shapes, and the report's use.

Pure arithmetic, no timing: bench.run.timing's counts against a hand count and against the
weight matrices of lvm.model.seed_decoder, and bench.report.analysis deriving the same ``flop``
for a row without the column as the sweep would have stored in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report import analysis, findings
from bench.report.render import fmt_pct
from bench.run.store import Meta, Run
from bench.run.timing import decoder_flop_per_draw, estimate_flop, matmul_shapes, roofline_seconds
from lvm import zoo
from lvm.model import architecture, seed_decoder


def shapes_flop(shapes: dict) -> int:
    return sum(count * 2 * m * k * n for (m, k, n), count in shapes.items())


SMALL = architecture(2, hidden=4, layers=2, output="logits", data_dim=3)  # (2, 4), (4, 4), (4, 3) weights


def test_small_architecture_by_hand():
    assert decoder_flop_per_draw(SMALL) == 2 * (2 * 4 + 4 * 4 + 4 * 3) == 72
    # B = 5 digits, N = 7 draws: the decoder on 7 draws plus the [5, 3] @ [3, 7] data product.
    assert estimate_flop(SMALL, 5, 7) == 7 * 72 + 2 * 5 * 3 * 7 == 714


@pytest.mark.parametrize("arch", [SMALL, architecture(2, 512, 3, "logits"), architecture(8, 128, 2, "probs"),
                                  zoo.parse("untrained-probs-k4").architecture()])
def test_decoder_flop_counts_the_weight_matrices_of_seed_decoder(arch):
    dec = seed_decoder(arch["latent_dim"], hidden=arch["hidden"], layers=arch["layers"],
                       output=arch["output"], data_dim=arch["data_dim"])
    weights = sum(p.numel() for name, p in dec.named_parameters() if name.endswith("weight"))
    assert decoder_flop_per_draw(arch) == 2 * weights


def test_part4_decoder_at_b32():
    """The issue's numbers: the 3 x 512 decoder is about 1.85 MFLOP a draw, about 58,000 a term at B = 32."""
    arch = zoo.parse("untrained-k2").architecture()
    per_draw = decoder_flop_per_draw(arch)
    assert per_draw == 2 * (2 * 512 + 2 * 512 * 512 + 512 * 784)
    assert estimate_flop(arch, 32, 1) / 32 == pytest.approx(per_draw / 32 + 2 * 784)
    assert round(per_draw / 32, -3) == 58_000


def test_matmul_shapes_add_up_to_the_estimate():
    shapes = matmul_shapes(SMALL, 5, 10, chunk=4)  # chunks of 4, 4 and 2 draws
    assert shapes == {(4, 2, 4): 2, (4, 4, 4): 2, (4, 4, 3): 2, (5, 3, 4): 2,
                      (2, 2, 4): 1, (2, 4, 4): 1, (2, 4, 3): 1, (5, 3, 2): 1}
    assert shapes_flop(shapes) == estimate_flop(SMALL, 5, 10)
    assert shapes_flop(matmul_shapes(SMALL, 5, 8, chunk=4)) == estimate_flop(SMALL, 5, 8)  # no remainder
    big = architecture(2, 512, 3, "logits")
    assert shapes_flop(matmul_shapes(big, 1000, 10_000)) == estimate_flop(big, 1000, 10_000)


def test_roofline_seconds_is_flop_over_the_rate_of_each_shape():
    shapes = matmul_shapes(SMALL, 5, 10, chunk=4)
    assert roofline_seconds(shapes, dict.fromkeys(shapes, 2.0)) == pytest.approx(
        estimate_flop(SMALL, 5, 10) / 2e9)
    slow = {s: (1.0 if s == (5, 3, 4) else 2.0) for s in shapes}  # the full-chunk data product at half rate
    extra = 2 * (2 * 5 * 3 * 4) / 2e9
    assert roofline_seconds(shapes, slow) == pytest.approx(estimate_flop(SMALL, 5, 10) / 2e9 + extra)


def _cells(**extra) -> pd.DataFrame:
    base = {"estimator": ["log_space"] * 3, "dtype": ["float32", "float32", "float64"],
            "n_samples": [1000, 10_000, 10_000],
            "model": ["untrained-k2", "untrained-probs-k8", "untrained-k2"],
            "parametrization": ["logits"] * 3, "device": ["cpu"] * 3, "status": ["ok"] * 3,
            "n_data": [32, 32, 32], "time_median_s": [0.01, 0.1, 0.4]}
    base["terms_per_s"] = [32 * n / t for n, t in zip(base["n_samples"], base["time_median_s"], strict=True)]
    return pd.DataFrame({**base, **extra})


def test_analysis_derives_the_flop_the_column_would_hold():
    cells = _cells()
    want = [estimate_flop(zoo.parse(m).architecture(), b, n)
            for m, b, n in zip(cells["model"], cells["n_data"], cells["n_samples"], strict=True)]
    np.testing.assert_array_equal(analysis.cell_flop(cells), want)
    with_column = _cells(flop=want)
    np.testing.assert_array_equal(analysis.cell_flop(with_column), analysis.cell_flop(cells))
    np.testing.assert_allclose(analysis.cell_gflops(cells), np.array(want) / cells["time_median_s"] / 1e9)


def test_analysis_prefers_the_column_and_fills_its_gaps():
    cells = _cells(flop=[1e9, np.nan, 3e9])
    got = analysis.cell_flop(cells)
    assert got[0] == 1e9 and got[2] == 3e9
    assert got[1] == estimate_flop(zoo.parse("untrained-probs-k8").architecture(), 32, 10_000)
    assert np.isnan(analysis.cell_flop(_cells(model=["not-a-zoo-model"] * 3))).all()


def test_finding_peak_counts_decoder_and_data_product():
    meta = Meta.of({"matmul_peak_gflops": {"cpu": {"float32": 100.0, "float64": 40.0}}})
    run = Run(Path("."), meta, _cells())
    f = findings.finding_peak(run)
    # float32's cell at its largest N (10^4) is untrained-probs-k8's, 0.1 s an estimate.
    arch = zoo.parse("untrained-probs-k8").architecture()
    gf = estimate_flop(arch, 32, 10_000) / 0.1 / 1e9
    assert f.numbers["cpu.gflops"] == pytest.approx(gf)
    assert f.numbers["cpu.fraction"] == pytest.approx(gf / 100.0)
    assert f.numbers["cpu.flop_per_term"] == pytest.approx(decoder_flop_per_draw(arch) / 32 + 2 * 784)
    assert fmt_pct(gf / 100.0) in f.sentence and "decoder" in f.sentence
