"""Q8_0, Q4_0 and Q4_1 blocks, byte-identical to ggml's, with scales chosen to minimise error.

A block is 32 consecutive weights of a row. ggml's reference quantizers take
the scale from the block's extreme value (max/-8 for Q4_0, (max-min)/15 for
Q4_1, amax/127 for Q8_0): the extreme is exact but the bulk of the weights,
which matter more, get coarse levels. Here each block tries candidate scales
around that one (like ggml's make_qx_quants), refits the scale (and min) by
weighted least squares on the levels each candidate produces, rounds them to
fp16 as the file stores them, re-rounds the levels to the stored scale, and
keeps the candidate with the lowest weighted squared error. The plain scale is
one of the candidates, so no block ends up worse than plain rounding.

The weights of that error are per input column: 1 by default (plain squared
weight error), or the mean squared activation that column multiplies
(`importance`, gathered by convert/calibrate.py), which is what a matmul's
output error depends on: the idea of AWQ and llama.cpp's importance matrix,
with the file format unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .gguf_writer import GGMLType, TensorData, tensor_from_float

QK = 32  # weights per block in all three formats
QUANT_TYPES = (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)
_CHUNK_ELEMENTS = 1 << 16  # blocks are processed in slices of this many weights to bound memory

TYPE_NAMES = {"f32": GGMLType.F32, "f16": GGMLType.F16, "q8_0": GGMLType.Q8_0,
              "q4_0": GGMLType.Q4_0, "q4_1": GGMLType.Q4_1}
# general.file_type values (llama.cpp's LLAMA_FTYPE_*) for a file whose big matrices have this type
FILE_TYPES = {GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.Q4_0: 2, GGMLType.Q4_1: 3, GGMLType.Q8_0: 7}
# the token embedding and output matrices; kept at a higher precision in 4-bit files
OUTPUT_TENSORS = ("token_embd.weight", "output.weight")


def parse_type(name: str) -> GGMLType:
    try:
        return TYPE_NAMES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown type {name!r}; expected one of {', '.join(TYPE_NAMES)}") from None


def tensor_type(name: str, shape: tuple[int, ...], file_type: GGMLType,
                output_type: GGMLType | None = None) -> GGMLType:
    """The type a tensor gets in a file of `file_type`.

    Norms stay F32. In 4-bit files the token embedding and output matrix
    default to Q8_0: they are the most sensitive to error and a small share of
    the bits. A row length that is not a multiple of 32 cannot be blocked and
    falls back to F16.
    """
    if len(shape) == 1:
        return GGMLType.F32
    qtype = file_type
    if name in OUTPUT_TENSORS:
        if output_type is not None:
            qtype = output_type
        elif file_type in (GGMLType.Q4_0, GGMLType.Q4_1):
            qtype = GGMLType.Q8_0
    if qtype in QUANT_TYPES and shape[-1] % QK != 0:
        return GGMLType.F16
    return qtype


def _fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _dot(a: np.ndarray, b: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Per-block weighted sums of a*b, [B,1], in one pass without temporaries."""
    if w is None:
        return np.einsum("ij,ij->i", a, b)[:, None]
    return np.einsum("ij,ij,ij->i", w, a, b)[:, None]


def _round_levels(x: np.ndarray, scale: np.ndarray, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
    np.multiply(x, scale, out=out)
    np.rint(out, out=out)
    return np.clip(out, lo, hi, out=out)


def _symmetric(x: np.ndarray, w: np.ndarray | None, qtype: GGMLType, search: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """Scale d (fp16-exact, [B,1]) and integer levels L ([B,32]) with value d*L, for Q8_0 or Q4_0."""
    if qtype == GGMLType.Q8_0:
        lo, hi = -127, 127
        extreme = np.abs(x).max(axis=1, keepdims=True)
        d = extreme / np.float32(127)
        # ggml's roundf: halves away from zero
        t = x * _safe_inverse(d)
        levels = np.sign(t) * np.floor(np.abs(t) + np.float32(0.5))
        targets = [127 + 0.5 * k for k in range(-3, 4)]
    else:
        lo, hi = -8, 7
        idx = np.abs(x).argmax(axis=1)[:, None]
        extreme = np.take_along_axis(x, idx, axis=1)  # signed: ggml maps it to -8
        d = extreme / np.float32(-8)
        levels = np.clip(np.trunc(x * _safe_inverse(d) + np.float32(8.5)), 0, 15) - 8
        # the extreme mapped near -8 (ggml's choice) or near +7 (the other end of the range)
        targets = [-8 - 0.4 * k for k in range(-2, 3)] + [7 + 0.4 * k for k in range(-2, 3)]
    if not search:
        return _fp16(d), levels.astype(np.float32)
    # Only the scale is kept per candidate: the levels are re-derived from it at the end.
    # Error up to a per-block constant: d^2*sum(wLL) - 2d*sum(wxL).
    best_d = _fp16(d)
    lev = np.empty_like(x)
    _round_levels(x, _safe_inverse(best_d), lo, hi, lev)
    best_e = best_d * best_d * _dot(lev, lev, w) - 2 * best_d * _dot(x, lev, w)
    inv_extreme = _safe_inverse(extreme)
    starts = [levels.astype(np.float32)] + [np.float32(t) * inv_extreme for t in targets]
    for start in starts:
        if start.shape[1] == 1:  # a candidate inverse scale
            _round_levels(x, start, lo, hi, lev)
        else:
            lev[...] = start
        l2 = _dot(lev, lev, w)
        with np.errstate(divide="ignore", invalid="ignore"):
            dc = _fp16(np.where(l2 > 0, _dot(x, lev, w) / l2, 0).astype(np.float32))
        _round_levels(x, _safe_inverse(dc), lo, hi, lev)
        ec = dc * dc * _dot(lev, lev, w) - 2 * dc * _dot(x, lev, w)
        better = ec < best_e
        best_e = np.where(better, ec, best_e)
        best_d = np.where(better, dc, best_d)
    _round_levels(x, _safe_inverse(best_d), lo, hi, lev)
    return best_d, lev


def _affine(x: np.ndarray, w: np.ndarray | None, search: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1: scale d, min m (both fp16-exact, [B,1]) and levels L in 0..15 with value d*L + m."""
    mn = x.min(axis=1, keepdims=True)
    mx = x.max(axis=1, keepdims=True)
    d = (mx - mn) / np.float32(15)
    levels = np.clip(np.trunc((x - mn) * _safe_inverse(d) + np.float32(0.5)), 0, 15)
    if not search:
        return _fp16(d), _fp16(mn), levels.astype(np.float32)
    ones = np.ones_like(x)
    sw = _dot(ones, ones, w)
    sx = _dot(x, ones, w)
    lev = np.empty_like(x)
    shifted = np.empty_like(x)

    def fit_and_score(dc: np.ndarray, mc: np.ndarray) -> np.ndarray:
        # levels for the stored (fp16) d and m; error up to a per-block constant
        np.subtract(x, mc, out=shifted)
        _round_levels(shifted, _safe_inverse(dc), 0, 15, lev)
        sl, sl2, slx = _dot(lev, ones, w), _dot(lev, lev, w), _dot(lev, x, w)
        return dc * dc * sl2 + 2 * dc * mc * sl + mc * mc * sw - 2 * dc * slx - 2 * mc * sx

    best_d, best_m = _fp16(d), _fp16(mn)
    best_e = fit_and_score(best_d, best_m)
    inv_range = _safe_inverse(mx - mn)
    starts = [levels.astype(np.float32)] + [np.float32(15 + 0.2 * k) * inv_range for k in range(-5, 6)]
    for start in starts:
        if start.shape[1] == 1:
            np.subtract(x, mn, out=shifted)
            _round_levels(shifted, start, 0, 15, lev)
        else:
            lev[...] = start
        sl, sl2, slx = _dot(lev, ones, w), _dot(lev, lev, w), _dot(lev, x, w)
        det = sw * sl2 - sl * sl
        with np.errstate(divide="ignore", invalid="ignore"):
            dc = np.where(det > 0, (sw * slx - sl * sx) / det, 0).astype(np.float32)
            mc = np.where(det > 0, (sl2 * sx - sl * slx) / det, mn).astype(np.float32)
        dc, mc = _fp16(np.maximum(dc, 0)), _fp16(mc)
        ec = fit_and_score(dc, mc)
        better = ec < best_e
        best_e = np.where(better, ec, best_e)
        best_d = np.where(better, dc, best_d)
        best_m = np.where(better, mc, best_m)
    np.subtract(x, best_m, out=shifted)
    _round_levels(shifted, _safe_inverse(best_d), 0, 15, lev)
    return best_d, best_m, lev


def _pack_nibbles(levels: np.ndarray) -> np.ndarray:
    """ggml's layout: byte j holds weight j in the low nibble and weight j+16 in the high one."""
    q = levels.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8)


def quantize_blocks(x: np.ndarray, qtype: GGMLType, weights: np.ndarray | None = None,
                    search: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Quantize blocks x [B,32] (float32) into raw ggml blocks [B, type size] and their dequantized values."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == GGMLType.Q4_1:
        d, m, levels = _affine(x, weights, search)
        raw = np.concatenate([_f16_bytes(d), _f16_bytes(m), _pack_nibbles(levels)], axis=1)
        return raw, d * levels + m
    d, levels = _symmetric(x, weights, qtype, search)
    if qtype == GGMLType.Q8_0:
        codes = levels.astype(np.int8).view(np.uint8)
    elif qtype == GGMLType.Q4_0:
        codes = _pack_nibbles(levels + 8)
    else:
        raise ValueError(f"quantize_blocks: unsupported type {qtype.name}")
    return np.concatenate([_f16_bytes(d), codes], axis=1), d * levels


def _row_chunks(rows: np.ndarray) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        yield slice(start, min(start + step, rows.shape[0]))


def quantize(array: np.ndarray, qtype: GGMLType, *, importance: np.ndarray | None = None,
             search: bool = True, dequantized: np.ndarray | None = None) -> np.ndarray:
    """Raw bytes of `array` (last dim a multiple of 32) as qtype, shaped like gguf.quants.quantize's.

    importance: per input column (length = last dim) weights of the squared error.
    search=False gives ggml's reference rounding exactly. When `dequantized`
    (float32, array's shape) is given it receives the values the blocks decode to.
    """
    array = np.asarray(array)
    if array.shape[-1] % QK != 0:
        raise ValueError(f"row length {array.shape[-1]} is not a multiple of {QK}")
    rows = array.reshape(-1, array.shape[-1])
    n_blocks_row = rows.shape[1] // QK
    block_bytes = {GGMLType.Q8_0: 34, GGMLType.Q4_0: 18, GGMLType.Q4_1: 20}[qtype]
    out = np.empty((rows.shape[0], n_blocks_row * block_bytes), dtype=np.uint8)
    deq_rows = None if dequantized is None else dequantized.reshape(rows.shape)
    col_w = None
    if importance is not None:
        imp = np.asarray(importance, dtype=np.float32).reshape(n_blocks_row, QK)
        # a column no calibration token touched still deserves a little weight
        col_w = imp + np.float32(1e-6) * max(float(imp.mean()), 1e-30)
    for sl in _row_chunks(rows):
        x = rows[sl].astype(np.float32, copy=False).reshape(-1, QK)
        w = None if col_w is None else np.tile(col_w, (sl.stop - sl.start, 1))
        raw, deq = quantize_blocks(x, qtype, w, search)
        out[sl] = raw.reshape(sl.stop - sl.start, -1)
        if deq_rows is not None:
            deq_rows[sl] = deq.reshape(sl.stop - sl.start, -1)
    return out.reshape(*array.shape[:-1], n_blocks_row * block_bytes)


def encode_tensor(name: str, array: np.ndarray, qtype: GGMLType, *,
                  importance: np.ndarray | None = None, search: bool = True) -> TensorData:
    """A float tensor as it goes into the file: F32/F16 as is, quantized types through `quantize`."""
    if qtype not in QUANT_TYPES:
        return tensor_from_float(name, array, qtype)
    raw = quantize(array, qtype, importance=importance, search=search)
    return TensorData(name, tuple(array.shape), qtype, raw)
