"""lvm.numerics: dtype facts and the streaming, mergeable logsumexp.

Tolerances come from the unit roundoff u of the working dtype. For a logsumexp of n terms
computed as m + log1p(s), s = sum exp(a_i - m), the sum carries a relative error of at most
~n u plus u (1 + |a_i - m|) per term, and e^-t t <= 1/e, so the absolute error of the
result is below (1.4 n + |result| + 1) u; tests allow twice that (the float64 reference has
an error of the same order when the inputs are float64).
"""

from __future__ import annotations

import math
import warnings
from functools import reduce

import numpy as np
import pytest
import scipy.special
import torch

import lvm
from lvm.numerics import DTYPES, LogSumExpState, dtype_facts, parse_dtype

INF, NAN = math.inf, math.nan


def lse_tol(n: int, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Twice the forward-error bound (1.4 n + |result| + 1) u of an n-term logsumexp."""
    u = dtype_facts(dtype).unit_roundoff
    return 2 * (1.4 * n + ref.abs() + 1) * u


def same(got: torch.Tensor, want: torch.Tensor, n: int, dtype: torch.dtype) -> None:
    """Special values identical (NaN where NaN, same-signed inf); finite ones within lse_tol."""
    got, want = got.to(torch.float64), want.to(torch.float64)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    fin = torch.isfinite(want)
    assert torch.equal(got[~fin & ~torch.isnan(want)], want[~fin & ~torch.isnan(want)]), (got, want)
    assert torch.isfinite(got[fin]).all(), (got, want)
    err = (got - want)[fin].abs()
    tol = lse_tol(n, want, dtype)[fin]
    assert (err <= tol).all(), f"error {err.max():.3g} > bound {tol.min():.3g}"


def stream(a: torch.Tensor, chunk: int, dtype: torch.dtype | None = None) -> LogSumExpState:
    """Fold a [B, n] tensor into one state, ``chunk`` columns at a time."""
    state = LogSumExpState(a.shape[:-1], dtype=dtype or a.dtype)
    for c in a.split(chunk, dim=-1):
        state.update(c)
    return state


def merged(a: torch.Tensor, chunk: int, *, tree: bool) -> LogSumExpState:
    """One state per chunk, merged left to right or pairwise (as parallel workers would)."""
    states = [LogSumExpState(a.shape[:-1], dtype=a.dtype).update(c) for c in a.split(chunk, dim=-1)]
    if not tree:
        return reduce(lambda s, t: s.merge(t), states)
    while len(states) > 1:
        states = [states[i].merge(states[i + 1]) if i + 1 < len(states) else states[i]
                  for i in range(0, len(states), 2)]
    return states[0]


# --------------------------------------------------------------------------- dtype facts

@pytest.mark.parametrize("name, log_min_subnormal, unit_roundoff, int_view", [
    ("float16", -16.64, 2.0**-11, torch.int16),
    ("bfloat16", -92.19, 2.0**-8, torch.int16),
    ("float32", -103.28, 2.0**-24, torch.int32),
    ("float64", -744.44, 2.0**-53, torch.int64),
])
def test_dtype_facts(name, log_min_subnormal, unit_roundoff, int_view):
    f = dtype_facts(name)
    dt = DTYPES[name]
    assert f.name == name
    assert round(f.log_min_subnormal, 2) == log_min_subnormal
    assert f.underflow_threshold == f.log_min_subnormal
    assert f.unit_roundoff == unit_roundoff
    # Independently of torch.finfo: the smallest subnormal is the bit pattern 0...01.
    tiny = torch.tensor([1], dtype=int_view).view(dt).to(torch.float64).item()
    assert math.log(tiny) == pytest.approx(f.log_min_subnormal, abs=1e-12)
    # exp of the threshold is representable; one nat below it rounds to exactly 0.
    assert torch.tensor(math.exp(f.log_min_subnormal + 1e-9), dtype=torch.float64).to(dt) > 0
    assert torch.tensor(math.exp(f.log_min_subnormal - 1), dtype=torch.float64).to(dt) == 0
    # u is the unit roundoff: 1 + u ties back to 1, 1 + 2u is the next number.
    one = torch.ones((), dtype=dt)
    assert one + torch.tensor(unit_roundoff, dtype=dt) == one
    assert one + torch.tensor(2 * unit_roundoff, dtype=dt) > one
    assert f.log_max == pytest.approx(math.log(torch.finfo(dt).max))
    assert dtype_facts(dt) == f


def test_parse_dtype_accepts_names_and_torch_dtypes_and_names_bad_values():
    assert parse_dtype("float32") is torch.float32
    assert parse_dtype("torch.float64") is torch.float64
    assert parse_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype='float8' is not supported"):
        parse_dtype("float8")
    with pytest.raises(ValueError, match=r"accumulate_dtype=torch\.int32 is not supported"):
        parse_dtype(torch.int32, argument="accumulate_dtype")
    with pytest.raises(ValueError, match=r"dtype='float8'"):
        dtype_facts("float8")


# ----------------------------------------------------------------- special values vs scipy

SPECIAL = [
    [], [-INF], [-INF, -INF], [INF], [INF, 0.0], [INF, -INF], [INF, INF], [-INF, 0.0],
    [NAN], [NAN, 0.0], [NAN, INF], [NAN, -INF], [0.0, 1.0], [5.0], [-1000.0, -1000.0],
]


def _scipy_lse(values, dtype) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy.special.logsumexp(np.array(values, dtype=dtype)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("values", SPECIAL, ids=str)
def test_special_values_match_scipy(values, dtype):
    a = torch.tensor(values, dtype=dtype)
    want = torch.tensor(_scipy_lse(values, np.float64 if dtype == torch.float64 else np.float32),
                        dtype=dtype)
    n = len(values)
    one_shot = lvm.logsumexp(a)
    assert one_shot.dtype == dtype
    same(one_shot, want, n, dtype)
    # The same stream one element per update, and one state per element merged pairwise.
    rows = a[None]
    same(stream(rows, 1).result()[0], want, n, dtype)
    if n:
        same(merged(rows, 1, tree=True).result()[0], want, n, dtype)
        same(merged(rows, 1, tree=False).result()[0], want, n, dtype)


def test_special_values_per_row_and_along_dim0():
    cols = [[-INF, -INF], [INF, 0.0], [NAN, 0.0], [0.0, 0.0]]
    a = torch.tensor(cols, dtype=torch.float64).T  # [2, 4]: reduce over dim 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = torch.from_numpy(scipy.special.logsumexp(a.numpy(), axis=0))
    same(lvm.logsumexp(a, dim=0), want, 2, torch.float64)
    same(lvm.logsumexp(a.T, dim=-1), want, 2, torch.float64)


def test_scalar_input_is_its_own_logsumexp():
    """scipy.special.logsumexp(5.0) == 5.0; a 0-d tensor must not crash."""
    assert lvm.logsumexp(torch.tensor(5.0, dtype=torch.float64)).item() == 5.0
    assert lvm.logsumexp(torch.tensor(-INF)).item() == -INF


def test_nan_and_inf_survive_merges():
    clean = LogSumExpState((1,), dtype=torch.float64).update(torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    nan = LogSumExpState((1,), dtype=torch.float64).update(torch.tensor([[NAN]], dtype=torch.float64))
    pinf = LogSumExpState((1,), dtype=torch.float64).update(torch.tensor([[INF]], dtype=torch.float64))
    empty = LogSumExpState((1,), dtype=torch.float64)
    assert torch.isnan(clean.merge(nan).result()).all()
    assert pinf.merge(empty).result().item() == INF
    assert empty.result().item() == -INF


# ------------------------------------------------------------------------- accuracy

def test_dominant_term_float64_vs_exact_log1p():
    """[0, -40]: the answer log1p(e^-40) = 4.2e-18 is below u, so naive log(sum(exp)) returns 0."""
    exact = math.log1p(math.exp(-40.0))
    u = dtype_facts("float64").unit_roundoff
    a = torch.tensor([0.0, -40.0], dtype=torch.float64)
    naive = torch.log(torch.exp(a).sum()).item()
    assert naive == 0.0  # relative error 1: the textbook form loses the small term entirely
    for got in (lvm.logsumexp(a), lvm.logsumexp(a.flip(0)),
                stream(a[None], 1).result()[0],  # the dominant term arrives first ...
                stream(a.flip(0)[None], 1).result()[0],  # ... or last, via _merge
                merged(a[None], 1, tree=False).result()[0]):
        assert abs(got.item() - exact) <= 2 * u * exact
    many = torch.cat([torch.zeros(1), torch.full((1000,), -40.0)]).to(torch.float64)
    exact_many = math.log1p(1000 * math.exp(-40.0))
    assert abs(lvm.logsumexp(many).item() - exact_many) <= 2 * 1001 * u * exact_many


def test_dominant_term_float32():
    exact = math.log1p(math.exp(-20.0))  # 2.1e-9, below float32's u = 6e-8
    a = torch.tensor([-20.0, 0.0], dtype=torch.float32)
    assert torch.log(torch.exp(a).sum()).item() == 0.0
    got = lvm.logsumexp(a).item()
    assert abs(got - exact) <= 2 * dtype_facts("float32").unit_roundoff * exact


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 7, 128, 1000])
def test_chunked_stream_and_merges_match_torch_one_shot(dtype, chunk):
    g = torch.Generator().manual_seed(3)
    n = 1000
    # Rows from tightly packed to widely spread terms; one row with a single dominant term.
    scales = torch.tensor([0.1, 1.0, 30.0, 300.0], dtype=torch.float64)[:, None]
    a = torch.randn(4, n, generator=g, dtype=torch.float64) * scales - 500
    a = torch.cat([a, torch.full((1, n), -900.0, dtype=torch.float64)])
    a[-1, 123] = -100.0
    a = a.to(dtype)
    want = torch.logsumexp(a.to(torch.float64), dim=-1)
    tol = lse_tol(n, want, dtype)
    one_shot = lvm.logsumexp(a)
    for got in (one_shot, stream(a, chunk).result(), merged(a, chunk, tree=False).result(),
                merged(a, chunk, tree=True).result()):
        assert got.dtype == dtype
        err = (got.to(torch.float64) - want).abs()
        assert (err <= tol).all(), f"max error {err.max():.3g} > bound {tol.min():.3g}"
    # The merged states agree with the one-shot lvm.logsumexp to the same bound.
    assert ((merged(a, chunk, tree=True).result() - one_shot).abs().to(torch.float64) <= tol).all()


def test_mixed_dtype_merge_uses_the_receiving_state_dtype():
    a = torch.randn(2, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s64 = LogSumExpState((2,), dtype=torch.float64).update(a[:, :32])
    s32 = LogSumExpState((2,), dtype=torch.float32).update(a[:, 32:].float())
    got = s64.merge(s32).result()
    assert got.dtype == torch.float64
    want = torch.logsumexp(torch.cat([a[:, :32], a[:, 32:].float().double()], 1), 1)
    # The float32 half carries float32 rounding into the float64 result.
    assert ((got - want).abs() <= lse_tol(64, want, torch.float32)).all()


# ------------------------------------------------------------------- float16 overflow

def test_float16_equal_terms_overflow_like_torch_and_accumulate_dtype_fixes_it():
    """65,536 zeros: the sum 65,536 exceeds float16's max 65,504, as in torch.logsumexp."""
    z = torch.zeros(65_536, dtype=torch.float16)
    assert torch.logsumexp(z, 0).item() == INF
    assert lvm.logsumexp(z).item() == INF
    assert lvm.logsumexp(z).dtype == torch.float16
    assert stream(z[None], 4096).result().item() == INF
    assert merged(z[None], 4096, tree=True).result().item() == INF

    u16 = dtype_facts("float16").unit_roundoff
    want = math.log(65_536)
    fixed = lvm.logsumexp(z, accumulate_dtype=torch.float32)
    assert fixed.dtype == torch.float32
    assert abs(fixed.item() - want) <= u16 * want
    assert abs(stream(z[None], 4096, dtype=torch.float32).result().item() - want) <= u16 * want
    # Half as many terms still fit: the overflow is the count, not a float16 defect of the code.
    half = lvm.logsumexp(z[:32_768])
    assert abs(half.item() - math.log(32_768)) <= 2 * u16 * math.log(32_768)


# ------------------------------------------------------ API input gaps (issue 13, item 14)

@pytest.mark.parametrize("shape, dim", [((3,), 1), ((3,), -2), ((2, 3), 2), ((), 1), ((2, 3), 1.0)])
def test_out_of_range_dim_is_named_not_wrapped(shape, dim):
    a = torch.zeros(shape)
    with pytest.raises(lvm.InputError, match=rf"dim={dim!r} is invalid for a {max(len(shape), 1)}-d input; "
                                             r"accepted: an integer from -"):
        lvm.logsumexp(a, dim=dim)
    with pytest.raises(lvm.InputError, match=rf"dim={dim!r} is invalid"):
        LogSumExpState(shape[:1], dtype=torch.float64).update(a, dim)


def test_bool_int_and_array_like_input_are_promoted_as_scipy_does():
    want = math.log(1 + math.e)  # log(e^1 + e^0)
    for a in ([True, False], torch.tensor([True, False]), (1, 0), np.array([1, 0]), torch.tensor([1, 0])):
        got = lvm.logsumexp(a)
        assert got.dtype.is_floating_point
        assert got.item() == pytest.approx(want, rel=1e-6)
        assert got.item() == pytest.approx(float(scipy.special.logsumexp(np.asarray(a, dtype=float))))
    assert lvm.logsumexp([[0.0, 1.0]], dim=1).dtype == torch.float32  # torch's default dtype
    assert lvm.logsumexp(np.array([0.0, 1.0])).dtype == torch.float64  # numpy's dtype is kept
    with pytest.raises(lvm.InputError, match=r"a='ab' \(a str\) is invalid; accepted: a tensor or array"):
        lvm.logsumexp("ab")


def test_state_update_accepts_a_0d_chunk_like_logsumexp():
    s = LogSumExpState((), dtype=torch.float64)
    s.update(torch.tensor(1.0, dtype=torch.float64)).update(torch.tensor(0.0, dtype=torch.float64))
    assert s.result().item() == lvm.logsumexp(torch.tensor([1.0, 0.0], dtype=torch.float64)).item()
    assert lvm.logsumexp(torch.tensor(2.5, dtype=torch.float64)).item() == 2.5
