"""anchordiff.graph against a naive dense implementation of eqs. 7-13 written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anchordiff.graph import (
    affinity_stats,
    anchor_accuracy,
    anchordiff_heatmaps,
    attention_gate,
    build_graph,
    cosine_affinity,
    gate_threshold,
    is_degenerate,
    mean_threshold_masks,
    minmax,
    propagate,
    propagate_scores,
    select_anchors,
    token_labels,
)

ATOL = 1e-5


# ----------------------------------------------------------------------------------------
# The naive reference: dense matrices, loops where they make the definition obvious.
# ----------------------------------------------------------------------------------------


def ref_cosine(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return xn @ xn.T


def ref_percentile(w: torch.Tensor, q: float) -> float:
    return float(np.percentile(w.double().cpu().numpy().ravel(), 100.0 * q))


def ref_w_hat(a_ii, o_ii, *, q=0.98, use_gate=True, use_wcos=True, clamp=True, empty_row="self_loop"):
    w_attn = ref_cosine(a_ii)
    w = ref_cosine(o_ii) if use_wcos else w_attn.clone()
    if use_gate:
        w = w * (w_attn.double() > ref_percentile(w_attn, q)).float()
    if clamp:
        w = w.clamp(min=0)
    n = w.shape[0]
    w_hat = torch.zeros_like(w)
    for i in range(n):
        total = w[i].sum()
        if total != 0:
            w_hat[i] = w[i] / total
        elif empty_row == "self_loop":
            w_hat[i, i] = 1.0
    return w_hat


def ref_propagate(w_hat: torch.Tensor, anchors: torch.Tensor, steps: int) -> torch.Tensor:
    out = []
    for p in anchors.tolist():
        s = torch.zeros(w_hat.shape[0])
        s[p] = 1.0
        for _ in range(steps):
            s = w_hat.T @ s
        lo, hi = s.min(), s.max()
        out.append(torch.zeros_like(s) if hi == lo else (s - lo) / (hi - lo))
    return torch.stack(out)


def random_inputs(n: int, k: int = 3, d: int = 24, seed: int = 0, sharpness: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    a_ii = torch.softmax(sharpness * torch.randn(n, n, generator=g), dim=1)
    o_ii = torch.randn(n, d, generator=g)
    a_ci = torch.rand(k, n, generator=g)
    return a_ii, o_ii, a_ci


def dense(w: torch.Tensor) -> torch.Tensor:
    return w if w.layout == torch.strided else w.to_dense()


# ----------------------------------------------------------------------------------------
# Eq. 7
# ----------------------------------------------------------------------------------------


def test_select_anchors_is_argmax_with_first_index_on_ties():
    _, _, a_ci = random_inputs(100, k=4)
    assert torch.equal(select_anchors(a_ci), torch.tensor([int(np.argmax(r)) for r in a_ci.numpy()]))
    tied = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    anchors = select_anchors(tied)
    assert anchors.tolist() == [1, 0]
    assert anchors.dtype == torch.int64


def test_select_anchors_accepts_low_precision_inputs():
    _, _, a_ci = random_inputs(64, k=3)
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        low = a_ci.to(dtype)
        assert torch.equal(select_anchors(low), select_anchors(low.float()))


# ----------------------------------------------------------------------------------------
# Eqs. 8-9: cosine affinities and the quantile gate
# ----------------------------------------------------------------------------------------


def test_cosine_affinity_matches_definition_and_zero_rows():
    x = torch.randn(20, 7)
    x[3] = 0
    w = cosine_affinity(x)
    for i in (0, 5, 19):
        for j in (1, 5, 11):
            expected = float(torch.dot(x[i], x[j]) / (x[i].norm() * x[j].norm()))
            assert w[i, j].item() == pytest.approx(expected, abs=1e-6)
    assert torch.all(w[3] == 0) and torch.all(w[:, 3] == 0)


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.98, 0.999, 1.0])
@pytest.mark.parametrize("n", [1, 5, 256])
def test_gate_threshold_is_numpy_percentile(q, n):
    w = ref_cosine(torch.randn(n, 16))
    assert gate_threshold(w, q) == pytest.approx(ref_percentile(w, q), abs=1e-7)


def test_gate_threshold_with_ties():
    w = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.5], [0.2, 0.2, 0.2]])
    for q in (0.1, 0.5, 0.98):
        assert gate_threshold(w, q) == pytest.approx(ref_percentile(w, q), abs=1e-7)


def test_gate_threshold_rank_is_exact_where_torch_quantile_rounds():
    """At 2^24 entries torch.quantile's float32 rank q * (n - 1) rounds to the next integer."""
    values = torch.arange(2**24, dtype=torch.float32)  # the k-th order statistic is k
    assert gate_threshold(values, 0.98) == pytest.approx(0.98 * (2**24 - 1), abs=1e-6)  # 16441670.7
    assert torch.quantile(values, 0.98).item() == 16441671.0


@pytest.mark.parametrize("q", [0.98, 0.5])
def test_attention_gate_matches_dense_gate(q):
    a_ii, _, _ = random_inputs(300)  # more than one 512-row block is not needed for equality
    rows, cols, vals, tau = attention_gate(a_ii, q)
    w_attn = ref_cosine(a_ii)
    assert tau == pytest.approx(ref_percentile(w_attn, q), abs=1e-7)
    expected = (w_attn.double() > tau).nonzero()
    assert torch.equal(torch.stack([rows, cols], dim=1), expected)  # sorted row-major
    assert torch.allclose(vals, w_attn[rows, cols], atol=1e-6)


def test_attention_gate_spans_several_blocks_and_keeps_symmetry():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1200, 12, generator=g)  # 3 row blocks of W_attn
    rows, cols, vals, tau = attention_gate(x, 0.98)
    w = ref_cosine(x)
    assert tau == pytest.approx(ref_percentile(w, 0.98), abs=1e-6)
    gate = torch.zeros(1200, 1200, dtype=torch.bool)
    gate[rows, cols] = True
    assert torch.equal(gate, gate.T)
    assert abs(int(gate.sum()) - int((w.double() > tau).sum())) <= 4  # float rounding at tau only
    assert torch.allclose(vals, w[rows, cols], atol=1e-5)


@pytest.mark.slow
def test_quantile_gate_on_more_than_2_pow_24_entries():
    n = 4100  # 16,810,000 entries > 2^24 = 16,777,216
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 16, generator=g)
    w = ref_cosine(x)
    assert w.numel() > 2**24  # older torch.quantile refuses this many entries
    expected_tau = ref_percentile(w, 0.98)
    assert gate_threshold(w, 0.98) == pytest.approx(expected_tau, abs=1e-6)
    rows, cols, vals, tau = attention_gate(x, 0.98)
    assert tau == pytest.approx(expected_tau, abs=1e-6)
    expected_count = int((w.double() > expected_tau).sum())
    assert abs(rows.numel() - expected_count) <= 8  # blockwise vs full matmul rounding at tau
    assert rows.numel() == pytest.approx(0.02 * n * n, rel=1e-3)


@pytest.mark.slow
def test_build_graph_on_more_than_2_pow_24_entries():
    n = 4100
    g = torch.Generator().manual_seed(3)
    a_ii = torch.softmax(torch.randn(n, 8, generator=g) @ torch.randn(8, n, generator=g), dim=1)
    o_ii = torch.randn(n, 8, generator=g)
    w_hat = build_graph(a_ii, o_ii)
    assert w_hat.layout == torch.sparse_csr
    sums = torch.zeros(n).index_add_(0, w_hat.to_sparse_coo().indices()[0], w_hat.values())
    assert torch.allclose(sums, torch.ones(n), atol=1e-5)
    assert w_hat.values().numel() <= 0.02 * n * n + 1


# ----------------------------------------------------------------------------------------
# Eqs. 10-11: the graph
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 37, 256])
@pytest.mark.parametrize("use_gate,use_wcos", [(True, True), (False, True), (True, False), (False, False)])
def test_build_graph_matches_dense_reference(n, use_gate, use_wcos):
    a_ii, o_ii, _ = random_inputs(n, seed=n)
    w_hat = build_graph(a_ii, o_ii, use_gate=use_gate, use_wcos=use_wcos)
    expected = ref_w_hat(a_ii, o_ii, use_gate=use_gate, use_wcos=use_wcos)
    assert w_hat.layout == (torch.sparse_csr if use_gate else torch.strided)
    assert w_hat.dtype == torch.float32 and w_hat.shape == (n, n)
    assert torch.allclose(dense(w_hat), expected, atol=ATOL, rtol=0)
    assert torch.allclose(dense(w_hat).sum(dim=1), torch.ones(n), atol=1e-5)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.995])
def test_build_graph_other_gate_quantiles(q):
    a_ii, o_ii, _ = random_inputs(128, seed=7)
    assert torch.allclose(
        dense(build_graph(a_ii, o_ii, gate_quantile=q)), ref_w_hat(a_ii, o_ii, q=q), atol=ATOL
    )


def test_build_graph_gated_sparsity_is_two_percent():
    a_ii, o_ii, _ = random_inputs(200)
    w_hat = build_graph(a_ii, o_ii)
    assert 0 < w_hat.values().numel() <= 0.02 * 200 * 200 + 1
    assert torch.all(w_hat.values() > 0)  # clamped negatives are not stored


def test_negative_cosines_clamped_or_kept():
    a_ii, o_ii, _ = random_inputs(64, seed=4)
    clamped = dense(build_graph(a_ii, o_ii, use_gate=False))
    assert clamped.min() >= 0
    kept = dense(build_graph(a_ii, o_ii, use_gate=False, clamp_negative=False))
    assert kept.min() < 0
    assert torch.allclose(kept, ref_w_hat(a_ii, o_ii, use_gate=False, clamp=False), atol=1e-4)


@pytest.mark.parametrize("use_gate", [True, False])
def test_zero_row_keeps_a_self_loop(use_gate):
    a_ii, o_ii, _ = random_inputs(50, seed=5)
    o_ii[7] = 0  # W_cos row 7 is all zero -> W row 7 sums to 0
    w_hat = dense(build_graph(a_ii, o_ii, use_gate=use_gate))
    expected_row = torch.zeros(50)
    expected_row[7] = 1.0
    assert torch.equal(w_hat[7], expected_row)
    assert torch.allclose(w_hat, ref_w_hat(a_ii, o_ii, use_gate=use_gate), atol=ATOL)
    zero = dense(build_graph(a_ii, o_ii, use_gate=use_gate, empty_row="zero"))
    assert torch.all(zero[7] == 0)
    assert torch.allclose(zero, ref_w_hat(a_ii, o_ii, use_gate=use_gate, empty_row="zero"), atol=ATOL)


def test_gate_quantile_one_leaves_only_self_loops():
    a_ii, o_ii, _ = random_inputs(30)
    w_hat = dense(build_graph(a_ii, o_ii, gate_quantile=1.0))  # tau = max, strict '>' keeps nothing
    assert torch.equal(w_hat, torch.eye(30))


# ----------------------------------------------------------------------------------------
# Eqs. 12-13: propagation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dense", "csr", "coo"])
@pytest.mark.parametrize("steps", [0, 1, 7, 160])
def test_propagate_matches_dense_reference(layout, steps):
    a_ii, o_ii, a_ci = random_inputs(256, k=4)
    w_hat = ref_w_hat(a_ii, o_ii)
    anchors = select_anchors(a_ci)
    given = {"dense": w_hat, "csr": w_hat.to_sparse_csr(), "coo": w_hat.to_sparse_coo()}[layout]
    heat = propagate(given, anchors, steps=steps)
    assert heat.shape == (4, 256) and heat.dtype == torch.float32
    assert torch.allclose(heat, ref_propagate(w_hat, anchors, steps), atol=ATOL)
    assert heat.min() >= 0 and heat.max() <= 1


def test_propagate_scores_conserve_mass():
    a_ii, o_ii, a_ci = random_inputs(100)
    scores = propagate_scores(build_graph(a_ii, o_ii), select_anchors(a_ci), steps=160)
    assert torch.allclose(scores.sum(dim=1), torch.ones(3), atol=1e-4)


@pytest.mark.parametrize("n", [3, 64, 256])
def test_anchordiff_heatmaps_match_dense_reference(n):
    a_ii, o_ii, a_ci = random_inputs(n, seed=11)
    heat = anchordiff_heatmaps(a_ii, o_ii, a_ci)
    expected = ref_propagate(ref_w_hat(a_ii, o_ii), a_ci.argmax(dim=1), 160)
    assert heat.shape == (3, n) and heat.device == a_ii.device
    assert torch.allclose(heat, expected, atol=ATOL)


@pytest.mark.parametrize("use_gate,use_wcos", [(False, True), (True, False)])
def test_ablations_match_dense_reference(use_gate, use_wcos):
    a_ii, o_ii, a_ci = random_inputs(128, seed=12)
    heat = anchordiff_heatmaps(a_ii, o_ii, a_ci, use_gate=use_gate, use_wcos=use_wcos, steps=40)
    expected = ref_propagate(ref_w_hat(a_ii, o_ii, use_gate=use_gate, use_wcos=use_wcos), a_ci.argmax(1), 40)
    assert torch.allclose(heat, expected, atol=ATOL)


@pytest.mark.parametrize(
    "options",
    [{}, {"clamp_negative": False}, {"empty_row": "zero"}, {"use_wcos": False}, {"gate_quantile": 0.9}],
)
def test_one_call_equals_build_then_propagate(options):
    """anchordiff_heatmaps skips the generic transpose of W_hat; the result must not change."""
    a_ii, o_ii, a_ci = random_inputs(150, seed=14)
    o_ii[[3, 40]] = 0  # two empty rows (self-loops, or zero rows)
    heat = anchordiff_heatmaps(a_ii, o_ii, a_ci, steps=30, **options)
    two_calls = propagate(build_graph(a_ii, o_ii, **options), select_anchors(a_ci), steps=30)
    assert torch.allclose(heat, two_calls, atol=1e-6)
    graph_options = {k: v for k, v in options.items() if k != "gate_quantile"}
    expected = ref_propagate(
        ref_w_hat(
            a_ii,
            o_ii,
            q=options.get("gate_quantile", 0.98),
            use_wcos=graph_options.get("use_wcos", True),
            clamp=graph_options.get("clamp_negative", True),
            empty_row=graph_options.get("empty_row", "self_loop"),
        ),
        a_ci.argmax(1),
        30,
    )
    assert torch.allclose(heat, expected, atol=ATOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    a_ii, o_ii, a_ci = (t.to(dtype) for t in random_inputs(96, seed=13))
    heat = anchordiff_heatmaps(a_ii, o_ii, a_ci)
    assert heat.dtype == torch.float32
    expected = anchordiff_heatmaps(a_ii.float(), o_ii.float(), a_ci.float())
    assert torch.equal(heat, expected)
    w_hat = build_graph(a_ii, o_ii)
    assert w_hat.dtype == torch.float32
    assert torch.allclose(dense(w_hat), ref_w_hat(a_ii.float(), o_ii.float()), atol=ATOL)


# ----------------------------------------------------------------------------------------
# Degenerate cases and input checks
# ----------------------------------------------------------------------------------------


def test_minmax_flags_constant_rows():
    scores = torch.tensor([[1.0, 3.0, 2.0], [0.5, 0.5, 0.5], [0.0, 0.0, 1e-9]])
    heat, degenerate = minmax(scores)
    assert degenerate.tolist() == [False, True, False]
    assert torch.allclose(heat[0], torch.tensor([0.0, 1.0, 0.5]))
    assert torch.all(heat[1] == 0)
    assert heat[2].tolist() == [0.0, 0.0, 1.0]
    assert is_degenerate(heat).tolist() == [False, True, False]


def test_single_token_image_is_degenerate():
    heat = anchordiff_heatmaps(torch.ones(1, 1), torch.ones(1, 4), torch.ones(2, 1))
    assert heat.shape == (2, 1) and torch.all(heat == 0)
    assert is_degenerate(heat).all()


def test_zero_steps_give_the_one_hot_seed():
    a_ii, o_ii, a_ci = random_inputs(40)
    heat = anchordiff_heatmaps(a_ii, o_ii, a_ci, steps=0)
    assert torch.equal(heat, torch.nn.functional.one_hot(a_ci.argmax(1), 40).float())


def test_mean_threshold_masks():
    heat = torch.tensor([[0.0, 0.2, 1.0, 0.9], [0.0, 0.0, 0.0, 0.0]])
    masks = mean_threshold_masks(heat.reshape(2, 2, 2))
    assert masks.reshape(2, 4).tolist() == [[False, False, True, True], [False, False, False, False]]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda a, o, c: build_graph(a[:, :-1], o), "square"),
        (lambda a, o, c: build_graph(a, o[:-1]), "one row per image token"),
        (lambda a, o, c: build_graph(a, o, gate_quantile=1.5), "gate_quantile"),
        (lambda a, o, c: build_graph(a, o, empty_row="drop"), "empty_row"),
        (lambda a, o, c: build_graph(a.fill_diagonal_(float("nan")), o), "NaN"),
        (lambda a, o, c: anchordiff_heatmaps(a, o, c[:, :-1]), r"\(K, N\)"),
        (lambda a, o, c: anchordiff_heatmaps(a, o, c, steps=-1), "steps"),
        (lambda a, o, c: propagate(torch.eye(16), torch.tensor([16])), r"\[0, 16\)"),
        (lambda a, o, c: propagate(torch.eye(16), torch.tensor([0.0])), "integer"),
        (lambda a, o, c: select_anchors(torch.zeros(3, 0)), "empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    a_ii, o_ii, a_ci = random_inputs(16)
    with pytest.raises(ValueError, match=match):
        call(a_ii, o_ii, a_ci)


def test_integer_inputs_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        select_anchors(torch.ones(2, 3, dtype=torch.int64))


# ----------------------------------------------------------------------------------------
# Diagnostics (Tables 1-2)
# ----------------------------------------------------------------------------------------


def test_token_labels_from_masks():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # token (0, 0) of a 2x2 grid, fully
    masks[1, 4:, 4:] = True  # token (1, 1)
    masks[1, 4:6, :4] = True  # half of token (1, 0)
    masks[0, 0, 7] = True  # one pixel of token (0, 1)
    labels = token_labels(masks, (2, 2))
    assert labels.tolist() == [1, -1, 2, 2]  # (0,1) is touched but under half -> boundary
    assert token_labels(masks, (2, 2), fg_fraction=0.6).tolist() == [1, -1, -1, 2]


def test_affinity_stats_match_loops():
    a_ii, o_ii, _ = random_inputs(40, seed=21)
    labels = torch.tensor([0] * 10 + [1] * 12 + [2] * 10 + [-1] * 8)
    stats = affinity_stats(a_ii, o_ii, labels)
    w_attn, w_cos = ref_cosine(a_ii), ref_cosine(o_ii)
    gated = w_cos * (w_attn.double() > ref_percentile(w_attn, 0.98)).float()
    sums = {m: {"same_object": [], "confusable": [], "fg_bg": []} for m in ("w_attn", "w_cos", "w_cos_gated")}
    for i in range(40):
        for j in range(40):
            li, lj = int(labels[i]), int(labels[j])
            if li < 0 or lj < 0:
                continue
            if li > 0 and li == lj and i != j:
                kind = "same_object"
            elif li > 0 and lj > 0 and li != lj:
                kind = "confusable"
            elif (li > 0) != (lj > 0):
                kind = "fg_bg"
            else:
                continue
            for name, w in (("w_attn", w_attn), ("w_cos", w_cos), ("w_cos_gated", gated)):
                sums[name][kind].append(float(w[i, j]))
    for name, kinds in sums.items():
        for kind, values in kinds.items():
            assert stats[name][kind] == pytest.approx(np.mean(values), abs=1e-6)
    assert stats["pairs"] == {
        "same_object": 12 * 11 + 10 * 9,
        "confusable": 2 * 12 * 10,
        "fg_bg": 2 * 10 * 22,
    }


def test_anchor_accuracy_rules():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[1, 4:6, 4:8] = True  # half of token (1, 1) on a 2x2 grid; its centre pixel (6, 6) is outside
    flat = torch.tensor([0, 3])
    assert anchor_accuracy(flat, masks, (2, 2)).tolist() == [True, False]
    assert anchor_accuracy(torch.tensor([[0, 0], [1, 1]]), masks, (2, 2)).tolist() == [True, False]
    assert anchor_accuracy(flat, masks, (2, 2), rule="majority").tolist() == [True, True]
    assert anchor_accuracy(torch.tensor([1, 0]), masks, (2, 2), rule="any").tolist() == [False, False]
    with pytest.raises(ValueError, match="outside"):
        anchor_accuracy(torch.tensor([[0, 2], [0, 0]]), masks, (2, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    a_ii, o_ii, a_ci = random_inputs(256, seed=31)
    cpu = anchordiff_heatmaps(a_ii, o_ii, a_ci)
    gpu = anchordiff_heatmaps(a_ii.cuda().bfloat16(), o_ii.cuda().bfloat16(), a_ci.cuda().bfloat16())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    ref = anchordiff_heatmaps(a_ii.bfloat16(), o_ii.bfloat16(), a_ci.bfloat16())
    assert torch.allclose(gpu.cpu(), ref, atol=1e-4)
    assert cpu.shape == gpu.shape
