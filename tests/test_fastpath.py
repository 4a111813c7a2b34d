"""The reductions' fast paths change no bit: every number equals what the plain code gave.

``LogSumExpState.update`` and ``Diagnostics.add`` skip their NaN / +inf screening when a
chunk has none, skip the zero count's compare when the row extremes settle it, and form the
exponentials in place in a buffer kept from chunk to chunk. The committed results rely on
the numbers staying bit for bit what they were, so this module keeps verbatim copies of the
two classes as they were before the fast paths (commit 8856c30: ``RefLogSumExpState``,
``RefDiagnostics``) and compares the current ones with them, bit for bit (NaN payloads and
signed zeros included):

- unit level, on random chunks in every dtype and accumulate dtype, with NaN, +inf and -inf
  terms, all -inf / all NaN rows, ties at the maximum, terms either side of the zero cutoff,
  several chunks per stream, merges, other reduction dims and non-contiguous chunks;
- end to end, through ``log_space``, ``prob_space`` and ``lvm.shared.evaluate`` (cast and
  autocast) on a logits model, a probs model and a model whose terms include NaN and +/-inf,
  with the reference classes patched in for the reference run.
"""

from __future__ import annotations

import math

import pytest
import torch

import lvm
import lvm.numerics as numerics
import lvm.reductions as reductions
from lvm.kernels import CHUNK
from lvm.numerics import LogSumExpState, _reduction_input
from lvm.reductions import Diagnostics, diag_dtype, zero_cutoff
from lvm.shared import evaluate

INF, NAN = math.inf, math.nan
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FIELDS = ("log_px", "n_zero_terms", "n_nonfinite_terms", "ess")


# ----------------------------------------------------------------- the code before the fast paths


class RefLogSumExpState:
    """lvm.numerics.LogSumExpState before the fast path, verbatim."""

    def __init__(self, shape, *, dtype, device="cpu"):
        self.dtype = dtype
        self.m = torch.full(shape, -math.inf, dtype=dtype, device=device)
        self.s = torch.zeros(shape, dtype=dtype, device=device)
        self.posinf = torch.zeros(shape, dtype=torch.bool, device=device)
        self.nan = torch.zeros(shape, dtype=torch.bool, device=device)

    def update(self, a, dim=-1):
        a, dim = _reduction_input(a, dim)
        a = a.to(self.dtype)
        if a.shape[dim] == 0:
            return self
        self.nan |= torch.isnan(a).any(dim)
        self.posinf |= (a == math.inf).any(dim)
        clean = torch.where(torch.isnan(a) | (a == math.inf), -math.inf, a)
        m_c, idx = clean.max(dim, keepdim=True)
        safe = torch.where(torch.isfinite(m_c), m_c, torch.zeros_like(m_c))
        e = torch.exp(clean - safe)
        e = e.scatter(dim, idx, torch.zeros_like(m_c))  # the max term itself is the "1"
        s_c = e.sum(dim)
        self._merge(m_c.squeeze(dim), torch.where(torch.isfinite(m_c.squeeze(dim)), s_c, 0))
        return self

    def merge(self, other):
        self.nan |= other.nan
        self.posinf |= other.posinf
        self._merge(other.m.to(self.dtype), other.s.to(self.dtype))
        return self

    def _merge(self, m2, s2):
        m1, s1 = self.m, self.s
        new_m = torch.maximum(m1, m2)
        empty = new_m == -math.inf
        safe = torch.where(empty, torch.zeros_like(new_m), new_m)
        first_big = m1 >= m2
        small_m = torch.where(first_big, m2, m1)
        small_s = torch.where(first_big, s2, s1)
        big_s = torch.where(first_big, s1, s2)
        small_has = small_m > -math.inf
        add = torch.where(small_has, (1 + small_s) * torch.exp(small_m - safe), 0)
        self.s = torch.where(empty, torch.zeros_like(s1), big_s + add)
        self.m = new_m

    def result(self):
        out = self.m + torch.log1p(self.s)
        out = torch.where(self.m == -math.inf, -math.inf, out)
        out = torch.where(self.posinf, math.inf, out)
        return torch.where(self.nan, math.nan, out)


class RefDiagnostics:
    """lvm.reductions.Diagnostics (then lvm.estimators._Diagnostics) before the fast path, verbatim."""

    def __init__(self, B, device, dtype=torch.float64, engine="eager"):  # engine: added with issue 24
        assert engine == "eager"
        self.zero = torch.zeros(B, dtype=torch.int64, device=device)
        self.nonfinite = torch.zeros(B, dtype=torch.int64, device=device)
        self.dtype = dtype
        self.m = torch.full((B,), -math.inf, dtype=dtype, device=device)
        self.s1 = torch.zeros(B, dtype=dtype, device=device)
        self.s2 = torch.zeros(B, dtype=dtype, device=device)

    def add(self, terms, log_w):
        if terms is None:
            self.zero += (log_w <= zero_cutoff(log_w.dtype, log_w.device)).sum(-1)
            terms = log_w
        else:
            self.zero += (terms == 0).sum(-1)
        self.nonfinite += (torch.isnan(terms) | (terms == math.inf)).sum(-1)
        lw = torch.nan_to_num(log_w.to(self.dtype), nan=-math.inf, posinf=-math.inf, neginf=-math.inf)
        m_c = torch.maximum(lw.amax(-1), self.m)
        shift = torch.where(m_c == -math.inf, 0.0, m_c)
        e = torch.exp(lw - shift[:, None])
        scale = torch.exp(self.m - shift)
        self.s1 = self.s1 * scale + e.sum(-1)
        self.s2 = self.s2 * scale * scale + (e * e).sum(-1)
        self.m = m_c

    def ess(self):
        return torch.nan_to_num(self.s1 * self.s1 / self.s2, nan=0.0).to(torch.float64).cpu()


# ----------------------------------------------------------------------------------- helpers

_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit patterns (NaN payloads and the sign of zero count); others as they are."""
    t = t.contiguous()
    return t.view(_INT[t.element_size()]) if t.is_floating_point() else t


def assert_bits(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype)
    assert torch.equal(bits(got), bits(want)), (what, got, want)


def assert_state(got, want) -> None:
    for name in ("m", "s", "nan", "posinf"):
        assert_bits(getattr(got, name), getattr(want, name), name)
    assert_bits(got.result(), want.result(), "result")


def assert_diag(got, want) -> None:
    for name in ("zero", "nonfinite", "m", "s1", "s2"):
        assert_bits(getattr(got, name), getattr(want, name), name)
    assert_bits(got.ess(), want.ess(), "ess")


def chunk(g: torch.Generator, B: int, c: int, dtype: torch.dtype, kind: str, specials: str) -> torch.Tensor:
    """[B, c] log terms in ``dtype``.

    kind: "ll" log-likelihood-like (-550 +- 10: every term below the float32 zero cutoff);
    "spread" from 3 below the dtype's zero cutoff to 0 (some zero terms, some not); "narrow"
    in [-5, 0] (no zero terms); "ties" whole numbers in [-3, 0] (many ties at the maximum, 0.0
    and -0.0 among them); "wide" within +-10^5 (beyond float16: +-inf there, and where a
    float16 sum casts them); "bits" a mix of the others, row by row.
    specials: "" none; "neg" -inf terms and an all -inf row (still clean); "inf" those and
    +inf terms, an all +inf row; "nan" -inf and NaN terms, an all-NaN row; "dirty" all of them,
    with NaN and +inf in one row.
    """
    cut = zero_cutoff(dtype, torch.device("cpu"))
    u = torch.rand(B, c, generator=g, dtype=torch.float64)
    vals = {
        "ll": -550 + 10 * torch.randn(B, c, generator=g, dtype=torch.float64),
        "spread": (cut - 3) * u,
        "narrow": -5 * u,
        "ties": torch.floor(-4 * u) + 1,
        "wide": 2e5 * u - 1e5,
    }
    vals["ties"][(vals["ties"] == 0) & (u < 0.1)] = -0.0  # ties at the maximum with both signed zeros
    if kind == "bits":
        pick = torch.randint(0, len(vals), (B, 1), generator=g)
        a = torch.stack(list(vals.values())).gather(0, pick[None].expand(1, B, c))[0]
    else:
        a = vals[kind]
    a = a.to(dtype)
    r = torch.rand(B, c, generator=g)
    rows = torch.arange(B)[:, None]
    if specials:
        a[r < 0.02] = -INF
        a[1 % B] = -INF
    if specials in ("inf", "dirty"):
        a[(r > 0.985) & (r <= 0.99) & (rows % 2 == 0)] = INF
        a[3 % B, :: max(1, c // 3)] = INF
        a[4 % B, -1] = INF
        a[5 % B] = INF
    if specials in ("nan", "dirty"):
        a[(r > 0.99) & (rows % 3 == 0)] = NAN
        a[2 % B] = NAN
        a[3 % B, 0] = NAN
    return a


def streams():
    """(dtype, accumulate dtype) pairs: each dtype alone, float32 sums of the low precisions,
    and a float16 sum of float32 terms (the cast itself then overflows to +inf)."""
    out = [(d, d) for d in DTYPES]
    out += [(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.float16)]
    out += [(torch.float32, torch.float64)]
    return out


PLANS = [
    # (kind, specials, width) per chunk of one stream
    [("ll", "", 2048), ("ll", "", 2048), ("ll", "", 1808)],
    [("narrow", "", 300), ("spread", "neg", 7), ("ties", "", 64), ("narrow", "neg", 1)],
    [("spread", "dirty", 129), ("narrow", "", 257), ("ties", "inf", 33), ("ll", "neg", 500)],
    [("bits", "", 1000), ("bits", "nan", 1000), ("bits", "neg", 1000), ("bits", "", 3), ("bits", "inf", 9)],
    [("ties", "neg", 50), ("ties", "", 50), ("ties", "dirty", 50), ("ties", "nan", 50), ("ties", "", 1)],
    [("wide", "", 100), ("narrow", "inf", 100), ("wide", "neg", 100), ("spread", "nan", 100)],
]


# --------------------------------------------------------------------------------- unit level


@pytest.mark.parametrize("dtype,acc", streams(), ids=lambda d: numerics.dtype_name(d))
@pytest.mark.parametrize("plan", range(len(PLANS)))
def test_logsumexp_stream_bits(dtype, acc, plan):
    B = 40
    for seed in range(3):
        g = torch.Generator().manual_seed(1000 * plan + seed)
        got, want = LogSumExpState((B,), dtype=acc), RefLogSumExpState((B,), dtype=acc)
        for kind, specials, c in PLANS[plan]:
            a = chunk(g, B, c, dtype, kind, specials)
            got.update(a)
            want.update(a)
            assert_state(got, want)


@pytest.mark.parametrize("dtype,acc", streams(), ids=lambda d: numerics.dtype_name(d))
def test_logsumexp_merge_bits(dtype, acc):
    B = 30
    g = torch.Generator().manual_seed(7)
    parts = []
    for plan in PLANS:
        got, want = LogSumExpState((B,), dtype=acc), RefLogSumExpState((B,), dtype=acc)
        for kind, specials, c in plan:
            a = chunk(g, B, c, dtype, kind, specials)
            got.update(a)
            want.update(a)
        parts.append((got, want))
    got, want = LogSumExpState((B,), dtype=acc), RefLogSumExpState((B,), dtype=acc)
    for p_got, p_want in parts:
        got.merge(p_got)
        want.merge(p_want)
        assert_state(got, want)
    a = chunk(g, B, 100, dtype, "narrow", "")  # an update after merges
    assert_state(got.update(a), want.update(a))
    low = LogSumExpState((B,), dtype=torch.float16).merge(parts[0][0])  # a merge that narrows
    assert_state(low, RefLogSumExpState((B,), dtype=torch.float16).merge(parts[0][1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numerics.dtype_name(d))
@pytest.mark.parametrize("specials", ["", "neg", "inf", "nan", "dirty"])
def test_logsumexp_dims_and_layouts_bits(dtype, specials):
    g = torch.Generator().manual_seed(3)
    base = chunk(g, 24, 60, dtype, "bits", specials)
    cases = [
        (base, -1), (base.T, 0), (base.T.contiguous(), 0), (base[:, ::2], -1), (base[::3].T, 0),
        (base.reshape(4, 6, 60), 1), (base.reshape(4, 6, 60), -1),
        (base.reshape(4, 6, 60).transpose(0, 2), 2),
        (base[0], 0), (base[5, 7], 0), (base[:, :0], -1), (base[:0], -1),
    ]
    for a, dim in cases:
        full, d = _reduction_input(a, dim)
        shape = tuple(s for i, s in enumerate(full.shape) if i != d)
        for acc in {dtype, torch.float32, torch.float64}:
            got = LogSumExpState(shape, dtype=acc).update(a, dim)
            want = RefLogSumExpState(shape, dtype=acc).update(a, dim)
            assert_state(got, want)
            got.update(a, dim)
            want.update(a, dim)
            assert_state(got, want)


def test_logsumexp_function_bits(monkeypatch):
    """numerics.logsumexp (one update of a fresh state) on lists, scalars and every special row."""
    rows = [[], [-INF], [-INF, -INF], [NAN], [INF], [INF, NAN], [NAN, INF], [1.0, 1.0], [0.0, -0.0],
            [-0.0, 0.0], [3.0, INF, -INF], [-1e30, -1e30, 5.0], [2.0], [-INF, 2.0, -INF]]
    cases = [(torch.tensor(r, dtype=d), acc) for r in rows for d in DTYPES for acc in (None, torch.float64)]
    cases += [(torch.tensor(2.5), None), (torch.tensor(NAN), None), ([1.0, 2.0, 3.0], None)]
    got = [numerics.logsumexp(a, accumulate_dtype=acc) for a, acc in cases]
    monkeypatch.setattr(numerics, "LogSumExpState", RefLogSumExpState)
    want = [numerics.logsumexp(a, accumulate_dtype=acc) for a, acc in cases]
    for (a, _), x, y in zip(cases, got, want, strict=True):
        assert_bits(x, y, str(a))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numerics.dtype_name(d))
@pytest.mark.parametrize("plan", range(len(PLANS)))
def test_diagnostics_of_log_terms_bits(dtype, plan):
    """Diagnostics.add(None, log terms), as log_space calls it, in its own diagnostics dtype
    and in the other one (float16 terms into float64 bookkeeping, float64 into float32)."""
    B = 40
    for diag in {diag_dtype(dtype), torch.float32, torch.float64}:
        g = torch.Generator().manual_seed(50 + plan)
        got, want = Diagnostics(B, "cpu", diag), RefDiagnostics(B, "cpu", diag)
        for kind, specials, c in PLANS[plan]:
            a = chunk(g, B, c, dtype, kind, specials)
            got.add(None, a)
            want.add(None, a)
            assert_diag(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numerics.dtype_name(d))
@pytest.mark.parametrize("specials", ["", "neg", "inf", "nan", "dirty"])
def test_diagnostics_layouts_bits(dtype, specials):
    g = torch.Generator().manual_seed(4)
    base = chunk(g, 60, 24, dtype, "bits", specials)
    for a in (base.T, base.T.contiguous(), base[:, ::2], base[::3].T, base[:, 5:17], base[:0]):
        diag = diag_dtype(dtype)
        got, want = Diagnostics(len(a), "cpu", diag), RefDiagnostics(len(a), "cpu", diag)
        for _ in range(2):
            got.add(None, a)
            want.add(None, a)
            assert_diag(got, want)


def test_diagnostics_narrowing_cast_bits():
    """float64 log terms beyond float32's range: the float32 bookkeeping sees +inf (or -inf)."""
    a = torch.tensor([[-1.0, 1e300, -2.0], [-1e300, -3.0, -4.0], [-5.0, -6.0, -7.0]], dtype=torch.float64)
    got, want = Diagnostics(3, "cpu", torch.float32), RefDiagnostics(3, "cpu", torch.float32)
    for _ in range(2):
        got.add(None, a)
        want.add(None, a)
        assert_diag(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numerics.dtype_name(d))
@pytest.mark.parametrize("plan", range(len(PLANS)))
def test_diagnostics_of_prob_terms_bits(dtype, plan):
    """Diagnostics.add(terms, log terms), as prob_space calls it: zeros, -0.0, negative,
    NaN and +inf probability terms included."""
    B = 40
    diag = diag_dtype(dtype)
    g = torch.Generator().manual_seed(90 + plan)
    got, want = Diagnostics(B, "cpu", diag), RefDiagnostics(B, "cpu", diag)
    for i, (kind, specials, c) in enumerate(PLANS[plan]):
        terms = torch.exp(chunk(g, B, c, dtype, kind, specials))
        if i % 2:
            terms[5 % B, 0] = -0.0
            terms[6 % B, -1] = -terms[6 % B, -1]
        log_w = torch.log(terms.to(diag))
        got.add(terms, log_w)
        want.add(terms, log_w)
        assert_diag(got, want)


# --------------------------------------------------------------------------------- end to end


def _patch_reference(monkeypatch) -> None:
    monkeypatch.setattr(reductions, "LogSumExpState", RefLogSumExpState)
    monkeypatch.setattr(reductions, "Diagnostics", RefDiagnostics)
    monkeypatch.setattr(numerics, "LogSumExpState", RefLogSumExpState)


def _assert_estimates(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in got:
        for f in FIELDS:
            assert_bits(getattr(got[key], f), getattr(want[key], f), f"{key} {f}")


class Spiky:
    """A model whose log terms include NaN, +inf and -inf at seeded places: a logits
    model's, with row 0 NaN where z_0 > 1.5, row 1 +inf where z_1 < -1.8, row 2 all -inf,
    row 3 -inf where z_0 < 0, row 4 NaN and +inf in the same draws, the rest as they are."""

    latent_dim = 2

    def __init__(self, inner):
        self.inner = inner

    def sample_prior(self, n, generator):
        return self.inner.sample_prior(n, generator)

    def log_likelihood(self, x, z, dtype):
        ll = self.inner.log_likelihood(x, z, dtype).clone()
        zc = z.to(ll.device)
        ll[0, zc[:, 0] > 1.5] = NAN
        ll[1, zc[:, 1] < -1.8] = INF
        ll[2] = -INF
        ll[3, zc[:, 0] < 0] = -INF
        ll[4, zc[:, 1] > 1.0] = INF
        ll[4, zc[:, 1] > 1.9] = NAN
        return ll


@pytest.fixture(scope="module")
def k2():
    return lvm.zoo.get("untrained-k2")


@pytest.fixture(scope="module")
def k2_probs():
    return lvm.zoo.get("untrained-probs-k2")


def _estimators(model, x, n, chunk_size):
    out = {}
    for dt in DTYPES:
        for acc in (None, torch.float32):
            out["log", dt, acc] = lvm.log_space(model, x, n, dtype=dt, accumulate_dtype=acc, seed=4,
                                                chunk_size=chunk_size)
        out["exp", dt] = lvm.prob_space(model, x, n, dtype=dt, form="exp", seed=4, chunk_size=chunk_size)
        if hasattr(model, "pixel_probs") and chunk_size is None:  # its own chunking: once is enough
            out["product", dt] = lvm.prob_space(model, x, n, dtype=dt, seed=4)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size,n", [(None, 2 * CHUNK + 123), (700, 1500)])
def test_estimators_bits(monkeypatch, k2, k2_probs, binary_x, chunk_size, n):
    small = lvm.BernoulliLVM(lvm.seed_decoder(2, hidden=64, layers=2, output="logits", seed=3), 2)
    models = {"k2": k2, "k2-probs": k2_probs, "spiky": Spiky(small)}
    got = {(name, *k): e for name, m in models.items()
           for k, e in _estimators(m, binary_x, n, chunk_size).items()}
    _patch_reference(monkeypatch)
    want = {(name, *k): e for name, m in models.items()
            for k, e in _estimators(m, binary_x, n, chunk_size).items()}
    _assert_estimates(got, want)


def _evaluate(model, x, n):
    specs = {"log": {"space": "log"}, "acc32": {"space": "log", "accumulate": "float32"},
             "exp": {"space": "prob", "form": "exp"}, "product": {"space": "prob"}}
    out = {}
    for dt in DTYPES:
        for precision in ("cast", "autocast") if dt in (torch.float16, torch.bfloat16) else ("cast",):
            r = evaluate(model, x, n, dtype=dt, estimators=specs, outputs=("logits", "probs"), seed=9,
                         precision=precision)
            out |= {(dt, precision, *k): e for k, e in r.items()}
    return out


@pytest.mark.slow
def test_evaluate_bits(monkeypatch, k2, k2_probs, binary_x):
    n = CHUNK + 777
    got = {("k2", *k): e for k, e in _evaluate(k2, binary_x, n).items()}
    got |= {("k2-probs", *k): e for k, e in _evaluate(k2_probs, binary_x, n).items()}
    _patch_reference(monkeypatch)
    want = {("k2", *k): e for k, e in _evaluate(k2, binary_x, n).items()}
    want |= {("k2-probs", *k): e for k, e in _evaluate(k2_probs, binary_x, n).items()}
    _assert_estimates(got, want)
