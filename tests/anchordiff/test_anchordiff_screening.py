"""The bfloat16 screen of W_attn (``anchordiff.graph._screened_upper``): the float32 gate, under the worst
errors its bound admits, and the bound against the real bfloat16 product."""

from __future__ import annotations

import pytest
import torch

from anchordiff import graph
from anchordiff.graph import anchordiff_heatmaps, build_graph

ULP_AT_ONE = torch.finfo(torch.float32).eps


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def attention(n: int, sharpness: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(n, n, generator=g), dim=1)


def gate_matrix(rows: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    gate = torch.zeros(n, n, dtype=torch.bool)
    gate[rows, cols] = True
    return gate


def assert_float32_gate(xn: torch.Tensor, q: float, screened) -> None:
    """``screened`` (rows, cols, values, tau of the upper triangle) is the float32 gate: the same tau and
    the same entries, except entries within a few float32 ulps of tau (the two sum in other orders)."""
    rows, cols, vals, tau = screened
    r0, c0, v0, tau0 = graph._gated_upper(xn, q, screen=False)
    assert tau == pytest.approx(tau0, abs=8 * ULP_AT_ONE)
    n = xn.shape[0]
    w = xn.double() @ xn.double().T
    differ = gate_matrix(rows, cols, n) ^ gate_matrix(r0, c0, n)
    assert bool(((w[differ] - tau).abs() <= 64 * ULP_AT_ONE).all()), "screened gate differs away from tau"
    assert int(differ.sum()) <= 2
    assert bool((rows <= cols).all())
    assert torch.equal(rows * n + cols, (rows * n + cols).sort().values)  # row-major, as the float32 path
    if vals is not None:
        assert torch.allclose(vals.double(), w[rows, cols], atol=4 * ULP_AT_ONE)


@pytest.mark.parametrize(("sharpness", "q"), [(3.0, 0.98), (8.0, 0.98), (3.0, 0.5), (1.0, 0.9)])
def test_screened_gate_is_the_float32_gate(sharpness, q):
    xn = unit_rows(attention(700, sharpness, seed=1))  # two 512-row blocks
    assert_float32_gate(xn, q, graph._gated_upper(xn, q, screen=True))
    rows, cols, vals, tau = graph._gated_upper(xn, q, screen=True, need_values=False)
    assert vals is None
    assert_float32_gate(xn, q, (rows, cols, None, tau))


def adversarial_screen(
    monkeypatch, xn: torch.Tensor, q: float, fraction: float, pattern: str = "swap"
) -> None:
    """Replace the bfloat16 product by one of the worst the bound allows (errors of ``fraction * m``):

    * ``swap``: every entry of W_attn above the float32 tau_W screened low, every entry below it high, so
      that the screened order differs from the float32 one wherever the bound lets it;
    * ``up_but_above``: every entry high (tau_W's neighbours too), except the 3 entries nearest above tau_W,
      screened low: they look far below the screened tau_W;
    * ``down_but_below``: every entry low, except the 3 entries nearest below tau_W, screened high.
    """
    m, _ = graph._bf16_error_bound(xn.shape[1])
    w32 = xn @ xn.T
    tau = graph.gate_threshold(w32, q)
    above = w32.double() > tau
    if pattern == "swap":
        up = ~above
    else:
        side = above if pattern == "up_but_above" else ~above
        distance = torch.where(side, (w32.double() - tau).abs(), torch.inf).triu()
        distance[distance == 0] = torch.inf  # the lower triangle, zeroed by triu
        nearest = distance.reshape(-1).topk(3, largest=False).indices
        r, c = nearest // xn.shape[0], nearest % xn.shape[0]
        up = torch.ones_like(above) if pattern == "up_but_above" else torch.zeros_like(above)
        up[r, c] = up[c, r] = pattern != "up_but_above"
    worst = torch.where(up, w32 * (1 + fraction * m), w32 * (1 - fraction * m))
    float32_kept = graph._kept_upper

    def kept(x, bound):
        if x.dtype != torch.bfloat16:
            return float32_kept(x, bound)
        upper = torch.ones_like(worst, dtype=torch.bool).triu_()
        if bound is not None:
            upper &= worst >= bound
        r, c = upper.nonzero(as_tuple=True)
        off = r != c
        return r, c, worst[r, c], off, x.shape[0] ** 2 - (2 * int(off.sum()) + int((~off).sum()))

    monkeypatch.setattr(graph, "_kept_upper", kept)


@pytest.mark.parametrize("pattern", ["swap", "up_but_above", "down_but_below"])
@pytest.mark.parametrize("q", [0.98, 0.7])
def test_screened_gate_under_the_worst_errors_the_bound_allows(monkeypatch, q, pattern):
    xn = unit_rows(attention(600, 3.0, seed=2))
    adversarial_screen(monkeypatch, xn, q, fraction=0.95, pattern=pattern)
    assert_float32_gate(xn, q, graph._gated_upper(xn, q, screen=True))


@pytest.mark.parametrize("pattern", ["swap", "up_but_above"])
def test_a_lower_bound_that_may_have_dropped_band_entries_is_retried_lower(monkeypatch, pattern):
    """The sampled bound keeps enough entries for the rank, but entries it dropped could still be above
    tau_W in float32: the screen must not count them as below."""
    q = 0.98
    xn = unit_rows(attention(600, 3.0, seed=3))
    m, _ = graph._bf16_error_bound(xn.shape[1])
    tau = graph.gate_threshold(xn @ xn.T, q)
    adversarial_screen(monkeypatch, xn, q, fraction=0.95, pattern=pattern)
    # A bound that drops the entries within 0.45 m above the float32 tau_W (screened 0.95 m low) but few
    # enough to pass the rank check; then every entry.
    high = tau * (1 - 0.5 * m)
    monkeypatch.setattr(graph, "_sample_bounds", lambda x, q: [high, None])
    assert_float32_gate(xn, q, graph._gated_upper(xn, q, screen=True))


def test_a_sample_that_keeps_too_few_entries_is_retried():
    """The rows the sample draws (randperm with seed 0) are copies of one row: their bound keeps far
    fewer entries than the rank needs."""
    n = 600
    a_ii = attention(n, 3.0, seed=4)
    sampled = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: graph._SAMPLE_ROWS]
    a_ii[sampled] = a_ii[sampled[0]].clone()
    xn = unit_rows(a_ii)
    assert graph._sample_bounds(xn, 0.98)[0] > 0.99  # the copies' cosines with each other are 1
    assert_float32_gate(xn, 0.98, graph._gated_upper(xn, 0.98, screen=True))


def test_error_bound_holds_for_the_bfloat16_product_and_is_tight():
    """Entries whose mantissa is just below a bfloat16 rounding midpoint lose 2^-8 of their value each:
    products of such rows reach close to the bound (inputs twice, the result once), never past it."""
    d = 4096
    g = torch.Generator().manual_seed(5)
    exponents = torch.randint(-20, 0, (192, d), generator=g).float()
    x = (1 + 2.0**-8 - 2.0**-16) * 2.0**exponents  # rounds down to 2^e in bfloat16
    r, c, w, _, _ = graph._kept_upper(x.to(torch.bfloat16), None)
    exact = (x.double() @ x.double().T)[r, c]
    m, a = graph._bf16_error_bound(d)
    worst = float((((w.double() - exact).abs() - a) / exact).max())
    assert 0.85 * m <= worst <= m  # never past the bound, and not loose: the band is as narrow as it can be
    assert m == pytest.approx(1.2259e-2, rel=1e-4)  # (1 + 2^-8)^3 (1 + gamma) / (1 - gamma) - 1 at d = 4096
    assert a == pytest.approx((d + 1) * 2.0**-126)


def test_screening_is_used_where_it_is_sound_and_pays(monkeypatch):
    monkeypatch.setattr(graph, "_cpu_has_bf16_dot_products", lambda: True)
    attention_rows = unit_rows(attention(graph._SCREEN_MIN_ROWS, 3.0, seed=6))
    assert graph._screening_pays(attention_rows)
    assert not graph._screening_pays(attention_rows[:-1])  # too small to pay
    attention_rows[3, 4] = 0.0  # softmax rows underflow to exact zeros
    assert graph._screening_pays(attention_rows)
    signed = attention_rows.clone()
    signed[5, 7] = -1e-3
    assert not graph._screening_pays(signed)  # no relative bound with negative terms
    monkeypatch.setattr(graph, "_cpu_has_bf16_dot_products", lambda: False)
    assert not graph._screening_pays(attention_rows)


def test_cpu_flags_decide_bf16_hardware(monkeypatch, tmp_path):
    graph._cpu_has_bf16_dot_products.cache_clear()
    try:
        for flags, expected in [
            ("fpu avx512f avx512_bf16 sse", True),
            ("fpu amx_bf16 amx_tile", True),
            ("fpu avx2", False),
        ]:
            cpuinfo = tmp_path / "cpuinfo"
            cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
            monkeypatch.setattr(graph, "_CPUINFO", cpuinfo)
            graph._cpu_has_bf16_dot_products.cache_clear()
            assert graph._cpu_has_bf16_dot_products() is expected
        monkeypatch.setattr(graph, "_CPUINFO", tmp_path / "missing")
        graph._cpu_has_bf16_dot_products.cache_clear()
        assert graph._cpu_has_bf16_dot_products() is False
    finally:
        graph._cpu_has_bf16_dot_products.cache_clear()


@pytest.mark.parametrize("use_wcos", [True, False])
def test_graph_and_heatmaps_with_the_screen_equal_float32(monkeypatch, use_wcos):
    g = torch.Generator().manual_seed(7)
    a_ii = attention(700, 3.0, seed=7)
    o_ii = torch.randn(700, 24, generator=g)
    a_ci = torch.rand(3, 700, generator=g)
    monkeypatch.setattr(graph, "_screening_pays", lambda xn: False)
    w_ref = build_graph(a_ii, o_ii, use_wcos=use_wcos).to_dense()
    heat_ref = anchordiff_heatmaps(a_ii, o_ii, a_ci, use_wcos=use_wcos)
    monkeypatch.setattr(graph, "_screening_pays", lambda xn: True)
    w = build_graph(a_ii, o_ii, use_wcos=use_wcos).to_dense()
    assert torch.allclose(w, w_ref, atol=1e-6)
    assert torch.allclose(anchordiff_heatmaps(a_ii, o_ii, a_ci, use_wcos=use_wcos), heat_ref, atol=1e-5)
