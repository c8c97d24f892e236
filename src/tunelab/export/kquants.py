"""Numpy quantizers for llama.cpp's K-quant block types (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).

The `gguf` package (0.19) reads these types (`gguf.quants.dequantize`) but cannot write them, so
this module holds the writers. Each follows ggml's reference quantizer (`quantize_row_qN_K_ref`
in ggml-quants.c, the path `llama-quantize` takes without an importance matrix): a super-block of
256 values is split into sub-blocks of 16 or 32, each sub-block gets a scale (and for Q2/Q4/Q5 a
minimum) found by a small search that minimises the weighted squared error, and the sub-block
scales are themselves quantized to 4, 6 or 8 bits against one fp16 scale per super-block.

The byte layout of every block is the one `gguf.quants.dequantize` (and llama.cpp) reads, which
the tests check by dequantizing. Everything is vectorised over blocks: the searches loop over
candidate scales (up to 37), never over values, so a tensor costs a few dozen numpy passes.

    >>> blocks = quantize_k(weights, GGMLQuantizationType.Q4_K)   # (rows, cols/256*144) uint8
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

QK_K = 256
_EPS = 1e-15  # ggml's GROUP_MAX_EPS: a sub-block whose largest |x| is below it is all zeros

Q = GGMLQuantizationType


def _round(x: np.ndarray) -> np.ndarray:
    """Round half to even, as ggml's nearest_int does (the float-magic trick rounds to even)."""
    return np.rint(x)


def _fp16(x: np.ndarray) -> np.ndarray:
    """The value an fp16 field will hold (quantizers re-derive levels from the stored, rounded scale)."""
    return x.astype(np.float16).astype(np.float32)


def _qkx2(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
          use_mad: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and (positive) minimum per sub-block for the affine types Q2_K/Q4_K/Q5_K.

    x, w: (G, n) values and their importance. Returns scale (G,), min (G,) with
    x ~ scale * L - min, L in [0, nmax]. Tries nstep+1 scales around nmax/(max-min) and, for
    each, the least-squares scale and min for the levels it gives (ggml's make_qkx2_quants).
    """
    lo = np.minimum(x.min(axis=1), 0.0)  # (G,)
    hi = x.max(axis=1)
    span = hi - lo
    flat = span <= 0
    span = np.where(flat, 1.0, span)
    shifted = x - lo[:, None]  # (G, n), >= 0

    def levels(iscale: np.ndarray) -> np.ndarray:
        return np.clip(_round(iscale[:, None] * shifted), 0, nmax)

    iscale = nmax / span
    scale, best_min = 1.0 / iscale, lo.copy()
    L = levels(iscale)
    diff = scale[:, None] * L + lo[:, None] - x
    best = (w * (np.abs(diff) if use_mad else diff * diff)).sum(axis=1, dtype=np.float64)
    # Sums in float64: the squared error below is expanded from them, a difference of similar terms.
    sum_w = w.sum(axis=1, dtype=np.float64)
    sum_x = (w * x).sum(axis=1, dtype=np.float64)
    sum_x2 = (w * x * x).sum(axis=1, dtype=np.float64)
    for step in range(nstep + 1):
        L = levels((rmin + rdelta * step + nmax) / span)
        wL = w * L
        sum_l = wL.sum(axis=1, dtype=np.float64)
        sum_l2 = (wL * L).sum(axis=1, dtype=np.float64)
        sum_xl = (wL * x).sum(axis=1, dtype=np.float64)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Dsafe = np.where(ok, D, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Dsafe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Dsafe
        pos = this_min > 0  # the offset may only lower values: refit the scale alone with min 0
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, 1.0), this_scale)
        this_min = np.where(pos, 0.0, this_min)
        if use_mad:  # absolute error has no closed form: one more pass over the values
            cur = (w * np.abs(this_scale[:, None].astype(np.float32) * L + this_min[:, None].astype(np.float32)
                              - x)).sum(axis=1, dtype=np.float64)
        else:  # sum w (s L + m - x)^2, expanded
            cur = (this_scale ** 2 * sum_l2 + this_min ** 2 * sum_w + sum_x2 + 2 * this_scale * this_min * sum_l
                   - 2 * this_scale * sum_xl - 2 * this_min * sum_x)
        better = ok & (cur < best)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        best_min = np.where(better, this_min, best_min)
    scale = np.where(flat, 0.0, scale)
    return scale.astype(np.float32), (-best_min).astype(np.float32)


def _qx(x: np.ndarray, nmax: int) -> np.ndarray:
    """Scale per sub-block for the symmetric type Q6_K: x ~ scale * L, L in [-nmax, nmax-1].

    Weighted by x^2 (large values matter most); tries 19 scales around -nmax/max and keeps the
    least-squares one with the smallest error (ggml's make_qx_quants, rmse_type 1).
    """
    idx = np.abs(x).argmax(axis=1)
    mx = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]  # the signed value of largest magnitude
    zero = np.abs(mx) < _EPS
    mx = np.where(zero, 1.0, mx)
    w = x * x

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L = np.clip(_round(iscale[:, None] * x), -nmax, nmax - 1)
        return (w * x * L).sum(axis=1), (w * L * L).sum(axis=1)

    sumlx, suml2 = fit(-nmax / mx)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, 1.0), 0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        sumlx, suml2 = fit(-(nmax + 0.1 * step) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        cand = sumlx / np.where(suml2 > 0, suml2, 1.0)
        scale = np.where(better, cand, scale)
        best = np.where(better, cand * sumlx, best)
    return np.where(zero, 0.0, scale).astype(np.float32)


def _q3(x: np.ndarray, nmax: int) -> np.ndarray:
    """Scale per sub-block for Q3_K: x ~ scale * L, L in [-nmax, nmax-1], refined level by level.

    Starts from -nmax/max and for up to 5 passes moves each level to the one that raises
    (sum w x L)^2 / (sum w L^2), w = x^2 (ggml's make_q3_quants with do_rmse). The passes run
    over the sub-block's positions, each vectorised over all sub-blocks.
    """
    idx = np.abs(x).argmax(axis=1)
    mx = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]
    zero = np.abs(mx) < _EPS
    mx = np.where(zero, 1.0, mx)
    w = x * x
    L = np.clip(_round((-nmax / mx)[:, None] * x), -nmax, nmax - 1)
    sumlx, suml2 = (w * x * L).sum(axis=1), (w * L * L).sum(axis=1)
    for _ in range(5):
        changed = np.zeros(len(x), dtype=bool)
        for i in range(x.shape[1]):
            xi, wi, li = x[:, i], w[:, i], L[:, i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = slx > 0
            new = np.clip(_round(xi * sl2 / np.where(ok, slx, 1.0)), -nmax, nmax - 1)
            slx2, sl22 = slx + wi * xi * new, sl2 + wi * new * new
            take = ok & (new != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = np.where(take, new, li)
            sumlx = np.where(take, slx2, sumlx)
            suml2 = np.where(take, sl22, suml2)
            changed |= take
        if not changed.any():
            break
    scale = sumlx / np.where(suml2 > 0, suml2, 1.0)
    return np.where(zero, 0.0, scale).astype(np.float32)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (nb, 8) -> the 12 bytes Q4_K/Q5_K store them in (nb, 12)."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.zeros((len(ls), 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _affine_k(blocks: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared part of Q4_K and Q5_K: (nb, 256) -> d, dmin (nb,), packed scales (nb, 12), levels (nb, 256)."""
    nb = len(blocks)
    x = blocks.reshape(nb * 8, 32)
    av = np.sqrt((x * x).mean(axis=1, keepdims=True))
    scales, mins = _qkx2(x, av + np.abs(x), nmax, rmin, rdelta, nstep, use_mad=False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
    inv_s = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1.0), 0.0)
    inv_m = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1.0), 0.0)
    ls = np.minimum(63, _round(inv_s[:, None] * scales))
    lm = np.minimum(63, _round(inv_m[:, None] * mins))
    d, dmin = (max_scale / 63.0).astype(np.float16), (max_min / 63.0).astype(np.float16)
    sub_d = d.astype(np.float32)[:, None] * ls  # (nb, 8): what the reader will multiply by
    sub_m = dmin.astype(np.float32)[:, None] * lm
    safe = np.where(sub_d > 0, sub_d, 1.0)
    L = np.clip(_round((blocks.reshape(nb, 8, 32) + sub_m[..., None]) / safe[..., None]), 0, nmax)
    L = np.where(sub_d[..., None] > 0, L, 0).astype(np.uint8).reshape(nb, QK_K)
    return d, dmin, _pack_scale_min_k4(ls, lm), L


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) float32 -> (nb, 144) uint8: d, dmin (fp16), 12 bytes of 6-bit scales/mins, 128 bytes of 4-bit levels."""
    d, dmin, sc, L = _affine_k(blocks, 15, -1.0, 0.1, 20)
    L = L.reshape(len(blocks), 4, 2, 32)  # 4 chunks of 64: low nibble = first 32, high = next 32
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(len(blocks), 128)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), sc, qs], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) -> (nb, 176): d, dmin, 12 bytes scales/mins, 32 bytes of 5th bits, 128 bytes of low nibbles."""
    d, dmin, sc, L = _affine_k(blocks, 31, -0.5, 0.1, 15)
    L = L.reshape(len(blocks), 4, 2, 32)
    low = L & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(len(blocks), 128)
    high = (L >> 4).astype(np.uint8)  # (nb, 4, 2, 32): bit 2c+h of qh[j] is the 5th bit of chunk c, half h
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)  # (4, 2)
    qh = np.bitwise_or.reduce((high << shifts[None, :, :, None]).reshape(len(blocks), 8, 32), axis=1)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), sc,
                           qh.astype(np.uint8), qs], axis=1)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) -> (nb, 210): 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, d (fp16)."""
    nb = len(blocks)
    scales = _qx(blocks.reshape(nb * 16, 16), 32).reshape(nb, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, idx[:, None], axis=1)[:, 0]
    zero = np.abs(max_scale) < _EPS
    iscale = np.where(zero, 0.0, -128.0 / np.where(zero, 1.0, max_scale))
    d = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, iscale)).astype(np.float16)
    sc = np.minimum(127, _round(iscale[:, None] * scales)).astype(np.int8)
    sub_d = d.astype(np.float32)[:, None] * sc  # (nb, 16)
    safe = np.where(sub_d != 0, sub_d, 1.0)
    L = np.clip(_round(blocks.reshape(nb, 16, 16) / safe[..., None]), -32, 31) + 32
    L = np.where(sub_d[..., None] != 0, L, 0).astype(np.uint8).reshape(nb, 2, 4, 32)  # 2 halves of 128, 4 x 32
    ql = np.concatenate([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4),
                         L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh.astype(np.uint8), sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)


def quantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) -> (nb, 110): 32 bytes high-bit mask, 64 bytes 2-bit levels, 12 bytes 6-bit scales, d (fp16)."""
    nb = len(blocks)
    scales = _q3(blocks.reshape(nb * 16, 16), 4).reshape(nb, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, idx[:, None], axis=1)[:, 0]
    zero = max_scale == 0
    iscale = np.where(zero, 0.0, -32.0 / np.where(zero, 1.0, max_scale))
    ls = (np.clip(_round(iscale[:, None] * scales), -32, 31) + 32).astype(np.uint8)  # (nb, 16) 6-bit
    d = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, iscale)).astype(np.float16)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, :8] = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    hi = (ls >> 4).reshape(nb, 4, 4)  # scale j: 2 bits at byte 8 + j%4, shift 2*(j//4)
    packed[:, 8:] = np.bitwise_or.reduce(hi << (2 * np.arange(4, dtype=np.uint8))[None, :, None], axis=1)
    sub_d = d.astype(np.float32)[:, None] * (ls.astype(np.float32) - 32)
    safe = np.where(sub_d != 0, sub_d, 1.0)
    L = np.clip(_round(blocks.reshape(nb, 16, 16) / safe[..., None]), -4, 3) + 4
    L = np.where(sub_d[..., None] != 0, L, 4).astype(np.uint8).reshape(nb, QK_K)
    # the high bit of value j goes to hmask[j % 32], bit j // 32; the low 2 bits stay in L
    hmask = np.bitwise_or.reduce(((L >> 2) & 1).reshape(nb, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None],
                                 axis=1).astype(np.uint8)
    low = (L & 3).reshape(nb, 2, 4, 32)  # 2 halves of 128; within a half, 4 groups of 32 -> 2-bit fields
    qs = np.bitwise_or.reduce(low << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None], axis=2).reshape(nb, 64)
    return np.concatenate([hmask, qs.astype(np.uint8), packed, d.view(np.uint8).reshape(-1, 2)], axis=1)


def quantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) -> (nb, 84): 16 bytes of 4-bit scale|min, 64 bytes 2-bit levels, d, dmin (fp16)."""
    nb = len(blocks)
    x = blocks.reshape(nb * 16, 16)
    scales, mins = _qkx2(x, np.abs(x), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
    ls = np.where(max_scale[:, None] > 0, _round(15.0 / np.where(max_scale > 0, max_scale, 1.0)[:, None] * scales), 0)
    lm = np.where(max_min[:, None] > 0, _round(15.0 / np.where(max_min > 0, max_min, 1.0)[:, None] * mins), 0)
    ls, lm = np.clip(ls, 0, 15).astype(np.uint8), np.clip(lm, 0, 15).astype(np.uint8)
    d = np.where(max_scale > 0, max_scale / 15.0, 0.0).astype(np.float16)
    dmin = np.where(max_min > 0, max_min / 15.0, 0.0).astype(np.float16)
    sub_d = d.astype(np.float32)[:, None] * ls
    sub_m = dmin.astype(np.float32)[:, None] * lm
    safe = np.where(sub_d > 0, sub_d, 1.0)
    L = np.clip(_round((blocks.reshape(nb, 16, 16) + sub_m[..., None]) / safe[..., None]), 0, 3)
    L = np.where(sub_d[..., None] > 0, L, 0).astype(np.uint8).reshape(nb, 2, 4, 32)
    qs = np.bitwise_or.reduce(L << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None], axis=2).reshape(nb, 64)
    return np.concatenate([ls | (lm << 4), qs.astype(np.uint8), d.view(np.uint8).reshape(-1, 2),
                           dmin.view(np.uint8).reshape(-1, 2)], axis=1)


K_QUANTIZERS = {Q.Q2_K: quantize_q2_k, Q.Q3_K: quantize_q3_k, Q.Q4_K: quantize_q4_k,
                Q.Q5_K: quantize_q5_k, Q.Q6_K: quantize_q6_k}


def quantize_k(data: np.ndarray, qtype: GGMLQuantizationType, chunk_values: int = 1 << 16) -> np.ndarray:
    """Quantize a (rows, cols) float array (cols a multiple of 256) to `qtype`; returns (rows, bytes per row) uint8.

    Works through about `chunk_values` values at a time: the searches make a dozen temporaries of
    the chunk's size per candidate scale, and keeping them in the CPU cache is 3x faster than
    passing a whole 4096 x 4096 matrix through memory at once (measured).
    """
    if data.shape[-1] % QK_K:
        raise ValueError(f"{qtype.name} needs rows that are a multiple of {QK_K} values; got {data.shape[-1]}")
    fn = K_QUANTIZERS[qtype]
    rows = data.reshape(-1, data.shape[-1]).astype(np.float32, copy=False)
    step = max(1, chunk_values // rows.shape[1])
    out = [fn(rows[i:i + step].reshape(-1, QK_K)).reshape(len(rows[i:i + step]), -1)
           for i in range(0, len(rows), step)]
    return np.concatenate(out, axis=0).reshape(*data.shape[:-1], -1)


def _measure(rows: int = 4096, cols: int = 4096) -> None:
    """Print CPU seconds per billion parameters of each K writer on one (rows, cols) Gaussian tensor."""
    import time

    w = (np.random.default_rng(0).standard_normal((rows, cols)) * 0.02).astype(np.float32)
    for qtype in K_QUANTIZERS:
        start = time.process_time()
        quantize_k(w, qtype)
        seconds = time.process_time() - start
        print(f"{qtype.name}: {seconds:.1f} CPU s for {w.size / 1e6:.1f}M values = {seconds / w.size * 1e9:.0f} s per billion")


if __name__ == "__main__":
    _measure()
