"""AnchorDiff's pure math: anchors, the gated affinity graph, propagation (paper eqs. 7-13).

Torch only (no model imports); every function runs on CPU or CUDA, accepts any floating
dtype (bf16, fp16, fp32, fp64) and computes in float32. Token indices are flat row-major
indices into the ``gh x gw`` token grid (``index = row * gw + col``), ``N = gh * gw``.

The specification is ``method.md`` (section "Anchor, graph, propagation"). Its **[decision]**
items are keyword arguments whose defaults are the documented choices:

* ``clamp_negative=True``: negative cosines are set to 0 before row normalisation (eq. 11).
* ``empty_row="self_loop"``: a row of ``W`` that sums to 0 becomes a self-loop of weight 1.
* gate threshold ``tau_W``: the ``gate_quantile`` (0.98) quantile of all ``N^2`` entries of
  ``W_attn`` with linear interpolation between order statistics (``numpy.percentile``'s
  default; the rank ``q * (N^2 - 1)`` is computed in float64), found exactly by selection
  (``kthvalue``), never ``torch.quantile`` (float32 ranks; older releases refuse more than
  2^24 entries). The gate is the strict ``W_attn > tau_W`` of eq. 9.

Performance: with the gate on, ``W_attn`` is computed block by block over its upper triangle
(it is symmetric; on a CPU with bfloat16 dot products it is screened in bfloat16 under a
rigorous error bound and only the entries near ``tau_W`` are recomputed in float32, see
``_screened_upper``), only the entries at or above a sampled lower bound of ``tau_W`` are
kept, ``W_cos`` is evaluated only on the open gate entries (a sampled dense-dense product),
and ``W_hat`` is a sparse CSR matrix with ``<= 2% * N^2`` non-zeros; ``W`` is symmetric, so
``W_hat^T`` shares ``W_hat``'s sparsity pattern, and the K seeds propagate together as one
``(N, K)`` matrix. The result equals the literal dense evaluation of eqs. 8-13 up to float32
rounding, except that an entry of ``W_attn`` within rounding of ``tau_W`` may fall on the other
side of the gate (``python -m anchordiff.bench`` compares both).
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "affinity_stats",
    "anchor_accuracy",
    "anchordiff_heatmaps",
    "attention_gate",
    "build_graph",
    "cosine_affinity",
    "gate_threshold",
    "is_degenerate",
    "mean_threshold_masks",
    "minmax",
    "propagate",
    "propagate_scores",
    "propagation_start",
    "propagation_steps",
    "select_anchors",
    "token_labels",
]

EmptyRow = Literal["self_loop", "zero"]

# Rows with an L2 norm below this are treated as zero vectors (cosine 0 with everything),
# as torch.nn.functional.normalize does.
_NORM_EPS = 1e-12
# Rows of W_attn per block when it is computed blockwise (bounds the temporary memory to
# _BLOCK_ROWS * N floats).
_BLOCK_ROWS = 512
# Rows of W_attn sampled to estimate a lower bound of tau_W before the blockwise pass.
_SAMPLE_ROWS = 64


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _as_float32(name: str, x: torch.Tensor, ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (bf16/fp16/fp32/fp64), got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); record at least one token and concept")
    x = x.float()
    # One reduction first (any NaN/inf makes the sum non-finite), the elementwise test only to
    # tell a real NaN/inf from a float32 overflow of the sum.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; check the recording (fp16 overflow?) before the graph")
    return x


def _check_quantile(gate_quantile: float) -> float:
    q = float(gate_quantile)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"gate_quantile must be in [0, 1] (0.98 = keep the top 2% of W_attn), got {q}")
    return q


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer (the paper uses 160), got {steps!r}")
    return int(steps)


def _check_empty_row(empty_row: str) -> str:
    if empty_row not in ("self_loop", "zero"):
        raise ValueError(f"empty_row must be 'self_loop' or 'zero', got {empty_row!r}")
    return empty_row


def _check_same_device(**tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs must be on one device, got {devices}; move them with .to(device)")
    return next(iter(devices.values()))


# --------------------------------------------------------------------------------------
# Eq. 7: anchors
# --------------------------------------------------------------------------------------


def select_anchors(a_ci: torch.Tensor) -> torch.Tensor:
    """Semantic anchors ``p*_k = argmax_i A_CI[k, i]`` (eq. 7).

    Args:
        a_ci: ``(K, N)`` concept-to-image attention, any floating dtype, any device.

    Returns:
        ``(K,)`` int64 flat token indices on ``a_ci``'s device (the first maximum on ties).
    """
    a_ci = _as_float32("a_ci", a_ci, 2)
    return a_ci.argmax(dim=1)


# --------------------------------------------------------------------------------------
# Eqs. 8-10: affinities and the gate threshold
# --------------------------------------------------------------------------------------


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` float32 -> rows divided by their L2 norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)


def cosine_affinity(x: torch.Tensor) -> torch.Tensor:
    """Dense cosine similarity of the rows of ``x`` (eqs. 8 and 10).

    Args:
        x: ``(N, D)`` any floating dtype. A zero row has cosine 0 with every row.

    Returns:
        ``(N, N)`` float32, ``out[i, j] = cos(x[i], x[j])``.
    """
    x = _as_float32("x", x, 2)
    xn = _normalize_rows(x)
    return xn @ xn.T


def _quantile_position(n: int, q: float) -> tuple[int, int, float]:
    """0-based order statistics (lo, hi) and weight of the linear-interpolation quantile."""
    pos = q * (n - 1)  # float64: exact enough for n up to 2^50
    lo = min(int(math.floor(pos)), n - 1)
    hi = min(lo + 1, n - 1)
    return lo, hi, pos - lo


def gate_threshold(w_attn: torch.Tensor, gate_quantile: float = 0.98) -> float:
    """``tau_W``: the ``gate_quantile`` quantile of all entries of a dense matrix (eq. 9).

    Linear interpolation between the two neighbouring order statistics at rank
    ``q * (n - 1)`` (``numpy.percentile``'s default), the rank computed in float64 and the
    order statistics by ``kthvalue`` on the flattened matrix, so it works for any number of
    entries and any floating dtype (``torch.quantile`` computes the rank in float32, which
    rounds it at 2^24 entries, refuses low-precision inputs, and in older releases refuses
    more than 2^24 entries).

    Args:
        w_attn: any shape, floating dtype (converted to float32), any device.
        gate_quantile: in [0, 1].

    Returns:
        The threshold as a Python float (float64 interpolation of float32 values).
    """
    q = _check_quantile(gate_quantile)
    flat = _as_float32("w_attn", w_attn, w_attn.ndim).reshape(-1)
    lo, hi, frac = _quantile_position(flat.numel(), q)
    v_lo = float(flat.kthvalue(lo + 1).values)
    v_hi = float(flat.kthvalue(hi + 1).values) if hi != lo else v_lo
    return v_lo + frac * (v_hi - v_lo)


def _upper_blocks(xn: torch.Tensor, lower_bound: float | None):
    """Yield the entries of ``xn @ xn.T`` on or above the diagonal that are ``>= lower_bound``.

    Each yielded item is ``(rows, cols, values)`` (int64, int64, ``xn``'s dtype) with ``rows <= cols``,
    in row-major order; successive items continue that order. The matrix is symmetric, so only
    ``~N^2 / 2`` entries are computed.
    """
    n = xn.shape[0]
    for i0 in range(0, n, _BLOCK_ROWS):
        i1 = min(i0 + _BLOCK_ROWS, n)
        block = xn[i0:i1] @ xn[i0:].T  # (b, n - i0): rows i0..i1, columns i0..n
        if lower_bound is None:
            r, c = torch.ones_like(block, dtype=torch.bool).triu_().nonzero(as_tuple=True)
        else:
            r, c = (block >= lower_bound).nonzero(as_tuple=True)
            upper = c >= r
            r, c = r[upper], c[upper]
        yield r + i0, c + i0, block[r, c]


def _sample_bounds(xn: torch.Tensor, q: float) -> list[float | None]:
    """Lower bounds of ``tau_W`` from a few random rows of ``xn @ xn.T`` (in ``xn``'s dtype), then ``None``.

    The callers check the rank of what each bound keeps, so a bad sample costs another pass, never a
    wrong gate."""
    n = xn.shape[0]
    generator = torch.Generator().manual_seed(0)
    sample_rows = torch.randperm(n, generator=generator)[: min(n, _SAMPLE_ROWS)].to(xn.device)
    sample = (xn[sample_rows] @ xn.T).float().reshape(-1)
    bounds: list[float | None] = []
    for level in (q - 0.5 * (1.0 - q), q - 4.0 * (1.0 - q)):
        if level > 0:
            k = int(level * (sample.numel() - 1))
            bounds.append(float(sample.kthvalue(k + 1).values))
    bounds.append(None)
    return bounds


def _kept_upper(xn: torch.Tensor, bound: float | None):
    """The upper-triangle entries of ``xn @ xn.T`` at or above ``bound`` -> ``rows, cols, float32 values,
    off-diagonal mask, and how many of the N^2 entries (both orientations) were not kept``."""
    parts = list(_upper_blocks(xn, bound))
    r = torch.cat([p[0] for p in parts])
    c = torch.cat([p[1] for p in parts])
    v = torch.cat([p[2] for p in parts]).float()
    off = r != c
    # The kept entries as a multiset of all N^2 entries: off-diagonal ones count twice.
    dropped = xn.shape[0] ** 2 - (2 * int(off.sum()) + int((~off).sum()))
    return r, c, v, off, dropped


def _order_statistics(v: torch.Tensor, off: torch.Tensor, lo: int, hi: int) -> tuple[float, float]:
    """The ``lo``-th and ``hi``-th (0-based) smallest of ``v`` as a multiset in which the entries
    where ``off`` is set count twice (they stand for ``(i, j)`` and ``(j, i)``)."""
    multiset = torch.cat([v, v[off]])
    v_lo = float(multiset.kthvalue(lo + 1).values)
    v_hi = float(multiset.kthvalue(hi + 1).values) if hi != lo else v_lo
    return v_lo, v_hi


def _exact_products(xn: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float32 ``(xn @ xn.T)[rows, cols]`` for unique pairs sorted row-major, without the dense product."""
    pattern = _csr(rows, cols, torch.ones(rows.numel(), dtype=xn.dtype, device=xn.device), xn.shape[0])
    return torch.sparse.sampled_addmm(pattern, xn, xn.T, beta=0.0, alpha=1.0).values()


def _gated_upper(
    xn: torch.Tensor, q: float, *, need_values: bool = True, screen: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """The gate of eq. 9 on ``W_attn = xn @ xn.T``, upper triangle only, without the dense matrix.

    Args:
        xn: ``(N, D)`` float32 rows with unit (or zero) norm.
        q: the gate quantile.
        need_values: ``False`` when the caller needs the gate only (the values then may be ``None``).
        screen: screen ``W_attn`` in bfloat16 (:func:`_screened_upper`); ``None`` decides by
            :func:`_screening_pays`.

    Returns:
        ``rows <= cols`` (int64, sorted row-major) of the open gate entries on or above the
        diagonal, their ``W_attn`` values (float32, or ``None`` when not needed) and ``tau_W``.
        ``G`` is symmetric: the entries below the diagonal are the transposes of the off-diagonal ones.
    """
    if screen is None:
        screen = _screening_pays(xn)
    if screen:
        return _screened_upper(xn, q, need_values=need_values)
    lo, hi, frac = _quantile_position(xn.shape[0] ** 2, q)
    for bound in _sample_bounds(xn, q):
        r, c, v, off, dropped = _kept_upper(xn, bound)
        if dropped <= lo:
            break
    else:  # pragma: no cover - the last bound (None) keeps every entry
        raise RuntimeError("gate selection failed")
    v_lo, v_hi = _order_statistics(v, off, lo - dropped, hi - dropped)
    tau = v_lo + frac * (v_hi - v_lo)
    gated = v.double() > tau  # strict, eq. 9; float64 so that tau is not rounded
    return r[gated], c[gated], v[gated], tau


# -- bfloat16 screening of W_attn -----------------------------------------------------------------------
# The float32 product xn @ xn.T over the upper triangle is most of the graph's time on CPU. Where the CPU
# has bfloat16 dot products (AVX512-BF16, AMX) the same product in bfloat16 takes about a third of it,
# and for non-negative rows (attention rows are) its error has a rigorous relative bound: every entry
# whose bound interval lies clear of the interval that must hold tau_W is on a known side of the gate,
# and only the rest (the "band", typically 1-50% of the gate's size) is recomputed in float32. The gate
# is then the float32 gate, up to the rounding of entries within float32 rounding of tau_W, as before.
_BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits; round-to-nearest-even
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
_BF16_FLUSH = 2.0**-126  # bfloat16 dot-product instructions flush subnormal inputs and results to 0
_SCREEN_MIN_ROWS = 1024  # below this the float32 product takes milliseconds; screening does not pay
_CPUINFO = Path("/proc/cpuinfo")


def _bf16_error_bound(d: int) -> tuple[float, float]:
    """``(m, a)`` with ``|W_bf16 - W_f32| <= m * W_f32 + a`` for every entry of ``xn @ xn.T``, ``xn``
    ``(N, d)`` non-negative unit rows.

    ``W_bf16`` rounds both inputs to bfloat16 (relative ``u = 2^-8`` each), multiplies exactly and
    accumulates ``d`` non-negative terms in float32 (relative ``gamma = d * 2^-24 / (1 - d * 2^-24)`` in
    any summation order), and rounds the result to bfloat16 (``u``); the float32 product it is compared
    with accumulates in float32 too (``gamma``). With all terms non-negative the errors are relative to
    the value: ``W_bf16 / W_f32`` lies in ``[(1 - u)^3 (1 - gamma) / (1 + gamma), (1 + u)^3 (1 + gamma) /
    (1 - gamma)]``, so ``m = (1 + u)^3 (1 + gamma) / (1 - gamma) - 1`` (1.23e-2 at d = 4096). ``a``
    covers the terms and results flushed to zero as subnormals (``2^-126`` each)."""
    gamma = d * _FLOAT32_UNIT_ROUNDOFF / (1.0 - d * _FLOAT32_UNIT_ROUNDOFF)
    m = (1.0 + _BF16_UNIT_ROUNDOFF) ** 3 * (1.0 + gamma) / (1.0 - gamma) - 1.0
    return m, (d + 1) * _BF16_FLUSH


@functools.cache
def _cpu_has_bf16_dot_products() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (Linux ``/proc/cpuinfo`` flags)."""
    try:
        flags = _CPUINFO.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _screening_pays(xn: torch.Tensor) -> bool:
    """Screen in bfloat16 on a CPU with bfloat16 hardware, for non-negative rows, from 1,024 rows up.

    On CUDA the float32 path stays (a few ms; it is the one checked on an H200); rows with negative
    entries have no relative error bound."""
    return (
        xn.device.type == "cpu"
        and xn.shape[0] >= _SCREEN_MIN_ROWS
        and _cpu_has_bf16_dot_products()
        and bool(xn.min() >= 0)
    )


def _screened_upper(
    xn: torch.Tensor, q: float, *, need_values: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """:func:`_gated_upper` with ``W_attn`` screened in bfloat16; ``xn`` must be non-negative.

    With ``m, a`` from :func:`_bf16_error_bound`, each screened value ``w`` brackets the float32 value
    in ``[(w - a) / (1 + m), (w + a) / (1 - m)]``, and the order statistics around ``tau_W`` are
    bracketed alike by those of the screened values. Entries whose bracket lies wholly below or above
    the bracket of ``tau_W`` are decided; the others are recomputed in float32 (a sampled product) and
    ``tau_W`` is selected among them at its exact rank. A lower bound that might have dropped an entry
    of the band is retried lower, as in the float32 path.
    """
    n = xn.shape[0]
    lo, hi, frac = _quantile_position(n * n, q)
    m, a = _bf16_error_bound(xn.shape[1])
    xb = xn.to(torch.bfloat16)
    for bound in _sample_bounds(xb, q):
        r, c, w, off, dropped = _kept_upper(xb, bound)
        if dropped > lo:
            continue
        w_lo, w_hi = _order_statistics(w, off, lo - dropped, hi - dropped)
        band_lo, band_hi = (w_lo - a) / (1.0 + m), (w_hi + a) / (1.0 - m)  # tau_W lies in here
        # A dropped entry (w < bound) is below (bound + a) / (1 - m) in float32: below the band.
        if bound is None or (bound + a) / (1.0 - m) < band_lo:
            break
    else:  # pragma: no cover - the last bound (None) keeps every entry
        raise RuntimeError("gate selection failed")
    above = (w - a) / (1.0 + m) > band_hi
    band = ((w + a) / (1.0 - m) >= band_lo) & ~above
    below = ~(above | band)
    exact = _exact_products(xn, r[band], c[band])
    band_off = off[band]
    below_count = dropped + 2 * int((below & off).sum()) + int((below & ~off).sum())
    v_lo, v_hi = _order_statistics(exact, band_off, lo - below_count, hi - below_count)
    tau = v_lo + frac * (v_hi - v_lo)
    gated = above
    gated[band] = exact.double() > tau  # strict, eq. 9; float64 so that tau is not rounded
    rows, cols = r[gated], c[gated]
    return rows, cols, (_exact_products(xn, rows, cols) if need_values else None), tau


def _mirror(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int):
    """Upper-triangle entries (rows <= cols) of a symmetric matrix -> all entries, sorted row-major."""
    off = rows != cols
    return _sort_pairs(
        torch.cat([rows, cols[off]]), torch.cat([cols, rows[off]]), torch.cat([vals, vals[off]]), n=n
    )


def attention_gate(
    a_ii: torch.Tensor, gate_quantile: float = 0.98
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The open entries of the gate ``G = W_attn > tau_W`` (eqs. 8-9), without a dense ``W_attn``.

    ``W_attn = cos(a_ii rows)`` is computed block by block over its upper triangle (it is
    symmetric, and ``G`` is made exactly symmetric); only entries at or above a lower bound
    of ``tau_W`` estimated from a few rows are kept, and ``tau_W`` is then selected exactly
    among them (if the bound was too high, a lower one is tried, down to keeping every
    entry), so the result does not depend on the sample. Temporary memory is ``O(512 * N)``
    plus the kept entries.

    Args:
        a_ii: ``(N, D)`` rows whose cosine similarities form ``W_attn`` (``D = N`` for the
            image self-attention), any floating dtype (float32 math).
        gate_quantile: ``tau_W`` is this quantile of all ``N^2`` entries (see
            :func:`gate_threshold` for the exact definition).

    Returns:
        ``(rows, cols, values, tau)``: int64 ``(M,)`` indices of every ``(i, j)`` with
        ``W_attn[i, j] > tau`` (both orientations, sorted row-major), their float32
        ``W_attn`` values, and ``tau`` as a Python float.
    """
    a_ii = _as_float32("a_ii", a_ii, 2)
    q = _check_quantile(gate_quantile)
    rows, cols, vals, tau = _gated_upper(_normalize_rows(a_ii), q)
    rows, cols, vals = _mirror(rows, cols, vals, a_ii.shape[0])
    return rows, cols, vals, tau


# --------------------------------------------------------------------------------------
# Eq. 11: the graph
# --------------------------------------------------------------------------------------


def _sort_pairs(rows: torch.Tensor, cols: torch.Tensor, *vals: torch.Tensor, n: int):
    """Sort unique (row, col) pairs row-major; ``vals`` are permuted alike."""
    order = torch.argsort(rows * n + cols)
    return (rows[order], cols[order], *(v[order] for v in vals))


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, n)`` sparse CSR from unique (row, col) pairs already sorted row-major."""
    crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, (n, n))


def _sparse_graph(
    a_ii: torch.Tensor,
    o_ii: torch.Tensor,
    q: float,
    use_wcos: bool,
    clamp_negative: bool,
    empty_row: str,
    transposed: bool,
) -> torch.Tensor:
    """Gated graph (eqs. 8-11) on validated float32 inputs -> ``W_hat`` or ``W_hat^T`` as CSR.

    ``W`` is symmetric (``G``, ``W_attn`` and ``W_cos`` are), so ``W_hat = D^-1 W`` and
    ``W_hat^T = W D^-1`` share one sorted sparsity pattern and differ only in their values
    (``W[i, j] / rowsum_i`` vs ``W[i, j] / rowsum_j``): the transpose costs no sort.
    """
    n = a_ii.shape[0]
    rows, cols, vals, _ = _gated_upper(_normalize_rows(a_ii), q, need_values=not use_wcos)
    if use_wcos:
        # W_cos only where the gate is open (upper triangle): a sampled dense-dense product.
        vals = _exact_products(_normalize_rows(o_ii), rows, cols)
    if clamp_negative:
        vals = vals.clamp(min=0)
    stored = vals != 0
    rows, cols, vals = _mirror(rows[stored], cols[stored], vals[stored], n)

    row_sum = torch.zeros(n, dtype=torch.float32, device=vals.device).index_add_(0, rows, vals)
    empty = row_sum == 0
    if not bool(empty.any()):
        return _csr(rows, cols, vals / row_sum[cols if transposed else rows], n)

    # Rows that sum to 0 lose their entries (non-zero only without the clamp) and get the
    # self-loop of weight 1, or nothing. The pattern is then no longer symmetric.
    keep = ~empty[rows]
    rows, cols, vals = rows[keep], cols[keep], vals[keep] / row_sum[rows[keep]]
    if empty_row == "self_loop":
        loops = empty.nonzero(as_tuple=True)[0]
        rows, cols, vals = _sort_pairs(
            torch.cat([rows, loops]),
            torch.cat([cols, loops]),
            torch.cat([vals, torch.ones_like(loops, dtype=vals.dtype)]),
            n=n,
        )
    return _csr(*_sort_pairs(cols, rows, vals, n=n), n) if transposed else _csr(rows, cols, vals, n)


def _normalize_dense(w: torch.Tensor, empty_row: str) -> torch.Tensor:
    """Row-normalise a dense ``(N, N)`` ``W`` -> ``W_hat`` (dense)."""
    row_sum = w.sum(dim=1, keepdim=True)
    empty = row_sum.squeeze(1) == 0
    w_hat = w / torch.where(row_sum == 0, torch.ones_like(row_sum), row_sum)
    if bool(empty.any()):
        w_hat[empty] = 0.0
        if empty_row == "self_loop":
            idx = empty.nonzero(as_tuple=True)[0]
            w_hat[idx, idx] = 1.0
    return w_hat


def _check_graph_inputs(a_ii, o_ii, gate_quantile, empty_row) -> tuple[torch.Tensor, torch.Tensor, float]:
    a_ii = _as_float32("a_ii", a_ii, 2)
    o_ii = _as_float32("o_ii", o_ii, 2)
    n = a_ii.shape[0]
    if a_ii.shape[1] != n:
        raise ValueError(f"a_ii must be square (N, N), got shape {tuple(a_ii.shape)}")
    if o_ii.shape[0] != n:
        raise ValueError(f"o_ii must have one row per image token: a_ii is {n}x{n}, o_ii {tuple(o_ii.shape)}")
    _check_same_device(a_ii=a_ii, o_ii=o_ii)
    _check_empty_row(empty_row)
    return a_ii, o_ii, _check_quantile(gate_quantile)


def _graph(a_ii, o_ii, q, use_gate, use_wcos, clamp_negative, empty_row, transposed) -> torch.Tensor:
    """``W_hat``, or ``W_hat^T`` in the layout propagation wants, on validated inputs."""
    if use_gate:
        return _sparse_graph(a_ii, o_ii, q, use_wcos, clamp_negative, empty_row, transposed)
    w = cosine_affinity(o_ii if use_wcos else a_ii)
    if clamp_negative:
        w.clamp_(min=0)
    w_hat = _normalize_dense(w, empty_row)
    return w_hat.T.contiguous() if transposed else w_hat


def build_graph(
    a_ii: torch.Tensor,
    o_ii: torch.Tensor,
    *,
    gate_quantile: float = 0.98,
    use_gate: bool = True,
    use_wcos: bool = True,
    clamp_negative: bool = True,
    empty_row: EmptyRow = "self_loop",
) -> torch.Tensor:
    """The row-normalised hybrid affinity graph ``W_hat`` (eqs. 8-11).

    ``W_attn = cos(A_II rows)`` (eq. 8), ``G = W_attn > tau_W`` with ``tau_W`` the
    ``gate_quantile`` quantile of all ``N^2`` entries of ``W_attn`` (eq. 9, see
    :func:`gate_threshold`), ``W_cos = cos(O_II rows)`` (eq. 10), ``W = W_cos * G`` and
    ``W_hat[i] = W[i] / sum_j W[i, j]`` (eq. 11).

    Args:
        a_ii: ``(N, N)`` image-to-image attention (rows sum to 1), any floating dtype.
        o_ii: ``(N, D)`` self-attention outputs ``A_II V`` (heads concatenated).
        gate_quantile: quantile of ``W_attn`` used as ``tau_W`` (paper: 0.98, top 2% kept).
        use_gate: ``False`` is the "w/o A_II gate" ablation: ``W = W_cos`` (dense).
        use_wcos: ``False`` is the "w/o W_cos" ablation: ``W = W_attn * G``. With both
            ``False``, ``W = W_attn`` (dense).
        clamp_negative: **[decision]** negative cosines are set to 0 before normalising
            (default ``True``). With ``False`` they are kept as signed weights.
        empty_row: **[decision]** a row whose sum is 0 becomes a self-loop of weight 1
            (``"self_loop"``, default) or stays all zero (``"zero"``: mass reaching it is lost).

    Returns:
        ``W_hat``: ``(N, N)`` float32 on the inputs' device; a sparse CSR tensor (int64
        indices, no stored zeros) when ``use_gate`` is ``True``, a dense tensor otherwise.
        Every row sums to 1 except empty rows under ``empty_row="zero"``.
    """
    a_ii, o_ii, q = _check_graph_inputs(a_ii, o_ii, gate_quantile, empty_row)
    return _graph(a_ii, o_ii, q, use_gate, use_wcos, clamp_negative, empty_row, transposed=False)


# --------------------------------------------------------------------------------------
# Eqs. 12-13: propagation and min-max normalisation
# --------------------------------------------------------------------------------------


def minmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise min-max normalisation (eq. 13) with the degenerate rule of ``method.md``.

    Args:
        scores: ``(K, N)`` floating.

    Returns:
        ``(heatmaps, degenerate)``: ``(K, N)`` float32 in [0, 1] (each non-degenerate row has
        min exactly 0 and max exactly 1), and ``(K,)`` bool, ``True`` where ``max == min``;
        such rows are all zeros.
    """
    scores = scores.float()
    lo = scores.amin(dim=1, keepdim=True)
    hi = scores.amax(dim=1, keepdim=True)
    degenerate = (hi == lo).squeeze(1)
    span = torch.where(degenerate[:, None], torch.ones_like(hi), hi - lo)
    heatmaps = ((scores - lo) / span).masked_fill_(degenerate[:, None], 0.0)
    return heatmaps, degenerate


def is_degenerate(heatmaps: torch.Tensor) -> torch.Tensor:
    """``(K, N)`` heatmaps from :func:`propagate` / :func:`minmax` -> ``(K,)`` bool degenerate flags.

    A min-max normalised row has maximum exactly 1 unless it was degenerate (all zeros).
    """
    return heatmaps.amax(dim=-1) <= 0


def _transpose_for_propagation(w_hat: torch.Tensor) -> torch.Tensor:
    """``W_hat`` (dense, COO, CSR or CSC) -> ``W_hat^T`` in a layout fast for ``@ (N, K)``."""
    if w_hat.layout == torch.strided:
        return w_hat.float().T.contiguous()
    coo = w_hat.to_sparse_coo().coalesce()
    r, c = coo.indices()
    n = w_hat.shape[0]
    return _csr(*_sort_pairs(c, r, coo.values().float(), n=n), n)


def _check_anchors(anchors: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if not isinstance(anchors, torch.Tensor) or anchors.ndim != 1 or anchors.is_floating_point():
        raise ValueError("anchors must be a (K,) integer tensor of flat token indices (see select_anchors)")
    if anchors.numel() == 0:
        raise ValueError("anchors is empty: query at least one concept")
    if int(anchors.min()) < 0 or int(anchors.max()) >= n:
        raise ValueError(f"anchors must lie in [0, {n}), got {anchors.tolist()}")
    return anchors.to(device=device, dtype=torch.int64)


def _seeds(n: int, anchors: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` float32 one-hot seeds ``s^(0)``: column k is 1 at ``anchors[k]``."""
    k = anchors.numel()
    s = torch.zeros(n, k, dtype=torch.float32, device=anchors.device)
    s[anchors, torch.arange(k, device=anchors.device)] = 1.0
    return s


def propagation_steps(w_hat_t: torch.Tensor, s: torch.Tensor, steps: int) -> torch.Tensor:
    """The loop of eq. 12: ``s <- W_hat^T s`` ``steps`` times, ``(N, N)``, ``(N, K)`` -> ``(N, K)``.

    Only matrix products: nothing in it reads a value back to the host, so on CUDA the ``steps`` products
    are queued without waiting (``anchordiff.bench.loop_host_syncs`` checks it)."""
    for _ in range(steps):
        s = w_hat_t @ s
    return s


def propagation_start(w_hat: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_hat`` and ``(K,)`` anchors -> ``W_hat^T`` in the layout of :func:`propagation_steps` and the
    ``(N, K)`` one-hot seeds, both on ``w_hat``'s device."""
    anchors = _check_anchors(anchors, w_hat.shape[0], w_hat.device)
    return _transpose_for_propagation(w_hat), _seeds(w_hat.shape[0], anchors)


def _propagate_transposed(w_hat_t: torch.Tensor, anchors: torch.Tensor, steps: int) -> torch.Tensor:
    """``s <- W_hat^T s`` ``steps`` times from one-hot seeds: ``(N, N)``, ``(K,)`` -> ``(K, N)``."""
    return propagation_steps(w_hat_t, _seeds(w_hat_t.shape[0], anchors), steps).T.contiguous()


def propagate_scores(w_hat: torch.Tensor, anchors: torch.Tensor, *, steps: int = 160) -> torch.Tensor:
    """Raw propagated scores ``s^(steps)`` (eq. 12), all K concepts at once.

    ``s^(0)`` is one-hot at each anchor and ``s^(n+1) = W_hat^T s^(n)``; the K seeds are the
    columns of one ``(N, K)`` matrix, so each step is one (sparse) matrix product.

    Args:
        w_hat: ``(N, N)`` row-normalised graph from :func:`build_graph`: dense, or sparse
            (COO, CSR or CSC), any floating dtype (computed in float32).
        anchors: ``(K,)`` integer flat token indices in ``[0, N)`` (:func:`select_anchors`).
        steps: ``N_diff``, number of propagation steps (paper: 160).

    Returns:
        ``(K, N)`` float32 scores on ``w_hat``'s device (each row sums to 1 when every row of
        ``W_hat`` does).
    """
    steps = _check_steps(steps)
    if not isinstance(w_hat, torch.Tensor) or w_hat.ndim != 2 or w_hat.shape[0] != w_hat.shape[1]:
        raise ValueError(f"w_hat must be a square (N, N) tensor, got {getattr(w_hat, 'shape', type(w_hat))}")
    if not w_hat.is_floating_point():
        raise TypeError(f"w_hat must be floating point, got {w_hat.dtype}")
    w_hat_t, seeds = propagation_start(w_hat, anchors)
    return propagation_steps(w_hat_t, seeds, steps).T.contiguous()


def propagate(w_hat: torch.Tensor, anchors: torch.Tensor, *, steps: int = 160) -> torch.Tensor:
    """Propagate one-hot anchor seeds over ``W_hat`` and min-max normalise (eqs. 12-13).

    Args:
        w_hat: ``(N, N)`` row-normalised graph (dense or sparse), see :func:`build_graph`.
        anchors: ``(K,)`` integer flat token indices.
        steps: ``N_diff`` (paper: 160).

    Returns:
        ``(K, N)`` float32 heatmaps in [0, 1] on ``w_hat``'s device; a row whose propagated
        scores are constant is all zeros (degenerate, see :func:`is_degenerate`).
    """
    return minmax(propagate_scores(w_hat, anchors, steps=steps))[0]


def anchordiff_heatmaps(
    a_ii: torch.Tensor,
    o_ii: torch.Tensor,
    a_ci: torch.Tensor,
    *,
    gate_quantile: float = 0.98,
    steps: int = 160,
    use_gate: bool = True,
    use_wcos: bool = True,
    clamp_negative: bool = True,
    empty_row: EmptyRow = "self_loop",
) -> torch.Tensor:
    """AnchorDiff token heatmaps for K concepts of one image (eqs. 7-13).

    Equal to ``propagate(build_graph(a_ii, o_ii, ...), select_anchors(a_ci), steps=steps)``,
    without the transpose of ``W_hat`` that :func:`propagate` needs for a general graph.

    Args:
        a_ii: ``(N, N)`` layer-averaged image-to-image attention (eq. 6).
        o_ii: ``(N, D)`` layer-averaged self-attention outputs.
        a_ci: ``(K, N)`` layer-averaged concept-to-image attention.
        gate_quantile, use_gate, use_wcos, clamp_negative, empty_row: see :func:`build_graph`.
        steps: ``N_diff`` (paper: 160).

    Returns:
        ``(K, N)`` float32 heatmaps in [0, 1] on the inputs' device, row-major over the
        token grid (reshape to ``(K, gh, gw)``). Degenerate rows are all zeros.
    """
    a_ii, o_ii, q = _check_graph_inputs(a_ii, o_ii, gate_quantile, empty_row)
    a_ci = _as_float32("a_ci", a_ci, 2)
    if a_ci.shape[1] != a_ii.shape[0]:
        raise ValueError(
            f"a_ci must be (K, N) with N = {a_ii.shape[0]} image tokens like a_ii, got {tuple(a_ci.shape)}"
        )
    _check_same_device(a_ii=a_ii, a_ci=a_ci)
    steps = _check_steps(steps)
    w_hat_t = _graph(a_ii, o_ii, q, use_gate, use_wcos, clamp_negative, empty_row, transposed=True)
    return minmax(_propagate_transposed(w_hat_t, select_anchors(a_ci), steps))[0]


def mean_threshold_masks(heatmaps: torch.Tensor) -> torch.Tensor:
    """Masks ``h_hat > mean(h_hat)`` per row (the rule of ``method.md``).

    Args:
        heatmaps: ``(K, ...)`` floating; the mean is over all but the first dimension.

    Returns:
        Bool tensor of the same shape. A degenerate (all-zero) row gives an empty mask.
    """
    flat = heatmaps.float().reshape(heatmaps.shape[0], -1)
    return (flat > flat.mean(dim=1, keepdim=True)).reshape(heatmaps.shape)


# --------------------------------------------------------------------------------------
# Diagnostics: Tables 1-2
# --------------------------------------------------------------------------------------


def _cell_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(K, H, W)`` masks -> ``(K, gh * gw)`` fraction of each token cell covered."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {tuple(masks.shape)}")
    gh, gw = (int(g) for g in grid)
    h, w = masks.shape[1:]
    if gh < 1 or gw < 1 or gh > h or gw > w:
        raise ValueError(f"grid {grid} must be at least 1x1 and no finer than the mask size {h}x{w}")
    cover = torch.nn.functional.adaptive_avg_pool2d(masks.float()[None], (gh, gw))[0]
    return cover.reshape(masks.shape[0], gh * gw)


def token_labels(
    masks: torch.Tensor, grid: tuple[int, int], *, fg_fraction: float = 0.5, bg_fraction: float = 0.0
) -> torch.Tensor:
    """Object label of every token from image-resolution masks (for :func:`affinity_stats`).

    The token cell of grid position ``(r, c)`` covers the pixel rectangle
    ``[r * H / gh, (r + 1) * H / gh) x [c * W / gw, (c + 1) * W / gw)`` (adaptive average
    pooling of the masks: exact when ``H`` and ``W`` are multiples of ``gh`` and ``gw``, as at
    1024 px on a 64 x 64 grid; otherwise the cells are widened to whole pixels).

    Args:
        masks: ``(K, H, W)`` bool masks at image resolution, one per concept (may overlap).
        grid: ``(gh, gw)`` token grid.
        fg_fraction: a token belongs to concept k if mask k covers at least this fraction
            of its cell (the largest coverage wins).
        bg_fraction: a token is background if the union of all masks covers at most this
            fraction of its cell (default 0: untouched by every mask).

    Returns:
        ``(gh * gw,)`` int64 on ``masks``' device: ``k + 1`` for concept ``k``, ``0`` for
        background, ``-1`` for boundary tokens that are neither (ignored by the statistics).
    """
    cover = _cell_coverage(masks, grid)  # (K, N)
    best, which = cover.max(dim=0)
    union = _cell_coverage(masks.any(dim=0, keepdim=True), grid)[0]
    labels = torch.full_like(which, -1)
    labels[union <= bg_fraction] = 0
    fg = best >= fg_fraction
    labels[fg] = which[fg] + 1
    return labels


def affinity_stats(
    a_ii: torch.Tensor,
    o_ii: torch.Tensor,
    labels: torch.Tensor,
    *,
    gate_quantile: float = 0.98,
    include_self_pairs: bool = False,
) -> dict[str, dict[str, float]]:
    """Mean affinities over same-object / confusable / foreground-background pairs (Table 1).

    Affinities are the raw (unclamped, unnormalised) matrices ``W_attn`` (eq. 8), ``W_cos``
    (eq. 10) and ``W_cos * G`` (eqs. 9-10). Pairs are ordered ``(i, j)``; all three matrices
    are symmetric so the order does not change the means.

    * ``same_object``: both tokens on the same object (``labels[i] == labels[j] > 0``),
      ``i != j`` unless ``include_self_pairs``.
    * ``confusable``: tokens on two different objects (``0 < labels[i] != labels[j] > 0``);
      in MCC every pair of concepts of an image is confusable by construction.
    * ``fg_bg``: one token on an object, the other on the background (label 0).

    Args:
        a_ii: ``(N, N)`` image-to-image attention. o_ii: ``(N, D)`` outputs.
        labels: ``(N,)`` integer token labels from :func:`token_labels` (``-1`` ignored).
        gate_quantile: ``tau_W`` quantile for ``G``.
        include_self_pairs: count ``(i, i)`` in ``same_object`` (cosine 1 by definition).

    Returns:
        ``{"w_attn" | "w_cos" | "w_cos_gated": {"same_object" | "confusable" | "fg_bg": mean},
        "pairs": {"same_object" | "confusable" | "fg_bg": count}}``; a mean over zero pairs is NaN.
        Means are fractions (multiply by 100 for the paper's percentages).
    """
    a_ii = _as_float32("a_ii", a_ii, 2)
    o_ii = _as_float32("o_ii", o_ii, 2)
    n = a_ii.shape[0]
    if a_ii.shape != (n, n) or o_ii.shape[0] != n:
        raise ValueError(f"a_ii must be (N, N) and o_ii (N, D), got {tuple(a_ii.shape)}, {tuple(o_ii.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer (N,) = ({n},) tensor (see token_labels)")
    _check_same_device(a_ii=a_ii, o_ii=o_ii, labels=labels)
    q = _check_quantile(gate_quantile)

    w_attn = cosine_affinity(a_ii)
    w_cos = cosine_affinity(o_ii)
    tau = gate_threshold(w_attn, q)
    gated = w_cos * (w_attn.double() > tau)

    labels = labels.long()
    fg = labels > 0
    bg = labels == 0
    same = (labels[:, None] == labels[None, :]) & fg[:, None] & fg[None, :]
    if not include_self_pairs:
        same.fill_diagonal_(False)
    pair_sets = {
        "same_object": same,
        "confusable": (labels[:, None] != labels[None, :]) & fg[:, None] & fg[None, :],
        "fg_bg": (fg[:, None] & bg[None, :]) | (bg[:, None] & fg[None, :]),
    }
    out: dict[str, dict[str, float]] = {}
    for name, w in (("w_attn", w_attn), ("w_cos", w_cos), ("w_cos_gated", gated)):
        out[name] = {
            kind: (float(w[pairs].double().mean()) if bool(pairs.any()) else float("nan"))
            for kind, pairs in pair_sets.items()
        }
    out["pairs"] = {kind: float(pairs.sum()) for kind, pairs in pair_sets.items()}
    return out


def anchor_accuracy(
    anchors: torch.Tensor,
    masks: torch.Tensor,
    grid: tuple[int, int],
    *,
    rule: Literal["center", "majority", "any"] = "center",
) -> torch.Tensor:
    """Whether each concept's anchor lies inside that concept's mask (Table 2).

    Args:
        anchors: ``(K,)`` flat token indices (:func:`select_anchors`) or ``(K, 2)`` (row, col)
            on the token grid (``AnchorDiffOutput.anchors``).
        masks: ``(K, H, W)`` bool ground-truth masks at image resolution, ``masks[k]`` for
            the concept of ``anchors[k]``.
        grid: ``(gh, gw)`` token grid of the anchors.
        rule: **[decision]** how a token "lies inside" a mask: ``"center"`` (default) the
            pixel at the centre of the token's cell, ``(floor((r + .5) H / gh), floor((c + .5) W / gw))``,
            is in the mask; ``"majority"`` at least half the cell is; ``"any"`` any pixel is.

    Returns:
        ``(K,)`` bool on ``masks``' device. Dataset-level anchor accuracy is the mean over
        all image-concept pairs (Table 2: correct = sum, total = count).
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {tuple(masks.shape)}")
    gh, gw = (int(g) for g in grid)
    k, h, w = masks.shape
    anchors = anchors.to(masks.device).long()
    if anchors.ndim == 1:
        rc = torch.stack([anchors // gw, anchors % gw], dim=1)
    elif anchors.ndim == 2 and anchors.shape[1] == 2:
        rc = anchors
    else:
        raise ValueError(
            f"anchors must be (K,) flat indices or (K, 2) row/col, got shape {tuple(anchors.shape)}"
        )
    if rc.shape[0] != k:
        raise ValueError(f"got {rc.shape[0]} anchors for {k} masks; pass one mask per concept")
    if bool(((rc[:, 0] < 0) | (rc[:, 0] >= gh) | (rc[:, 1] < 0) | (rc[:, 1] >= gw)).any()):
        raise ValueError(f"anchors {rc.tolist()} fall outside the {gh}x{gw} grid")
    if rule == "center":
        ys = ((rc[:, 0].double() + 0.5) * h / gh).floor().long().clamp(max=h - 1)
        xs = ((rc[:, 1].double() + 0.5) * w / gw).floor().long().clamp(max=w - 1)
        return masks[torch.arange(k, device=masks.device), ys, xs].bool()
    if rule not in ("majority", "any"):
        raise ValueError(f"rule must be 'center', 'majority' or 'any', got {rule!r}")
    cover = _cell_coverage(masks, (gh, gw))  # (K, N)
    flat = rc[:, 0] * gw + rc[:, 1]
    frac = cover[torch.arange(k, device=masks.device), flat]
    return frac >= 0.5 if rule == "majority" else frac > 0
