"""Int8 snapshots: a quarter of the fp32 bytes for the weights a model publishes to its peers.

A peer's weights only shape a penalty on logits, and every K updates a fresh snapshot
replaces them, so a per-row int8 grid costs the penalty little (benchmarks/peer_precision.py
measures how little) while the snapshot written and read every K updates shrinks 4x
against fp32 and 2x against fp16.

The payload is a plain ``Dict[str, Tensor]`` so ``torch.save`` writes it and
``torch.load(weights_only=True)`` reads it back:

    key            int8 (rows, ...)   a weight matrix, one scale per row (output channel)
    key + "@scale" fp16 (rows,)       the scale of that row: w ~ q * scale
    key            fp16               any other floating tensor (biases, norms)
    key            unchanged          integer and bool tensors (step counters, masks)

'@' never appears in a PyTorch module path, so a scale key cannot clash with a weight's.

Only torch and the standard library here: the exchange, the vision trainer and the
benchmarks all use it.
"""
from __future__ import annotations

from typing import Dict, Iterator, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

SCALE_SUFFIX = "@scale"
QMAX = 127  # symmetric: -127..127, so q and -q are both representable and 0 is exact
# The smallest normal fp16, 2**-14 ~ 6.1e-5. A scale stored below it would be subnormal
# (fewer significant bits, so the stored scale could be far from max|w_r| / 127 and the
# row's largest weights would clip) or zero (w / 0 = inf or nan). A row with
# max|w_r| < 127 * 2**-14 ~ 7.8e-3, all-zero rows included, gets this step instead of its
# own: its error stays under 2**-15 ~ 3.1e-5 per weight, absolute.
SCALE_FLOOR = torch.finfo(torch.float16).tiny
SCALE_CEIL = torch.finfo(torch.float16).max  # max|w_r| > 127 * 65504 ~ 8.3e6 is refused


def _tie_key(t: Tensor) -> Tuple:
    """Tensors with equal keys are the same weights (tied embeddings, shared projections)."""
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


ROW_CHUNK = 1 << 17  # elements quantised or dequantised at a time on a CPU: stays in L2


def _row_chunks(rows: int, width: int) -> Iterator[Tuple[int, int]]:
    """(first, end) row ranges of about ROW_CHUNK elements, whole rows each."""
    step = max(1, ROW_CHUNK // max(1, width))
    for r in range(0, rows, step):
        yield r, min(rows, r + step)


def _quantize_matrix(name: str, w: Tensor, out: Optional[Tuple[Tensor, Tensor]] = None
                     ) -> Tuple[Tensor, Tensor]:
    """(int8 q, fp16 scale) of one weight matrix, q on the CPU (into ``out``'s tensors
    where they fit); see ``quantize_int8``."""
    rows = w.flatten(1).float()  # (R, C): one output channel a row; w itself if fp32
    if rows.numel():
        low, high = torch.aminmax(rows, dim=1)  # no (R, C) temporary, unlike abs().amax()
        amax = torch.maximum(high, low.neg())  # max_j |w_rj|, exactly; nan stays nan
    else:
        amax = rows.new_zeros(rows.shape[0])
    if amax.numel() and not bool((amax <= QMAX * SCALE_CEIL).all()):  # False for nan too
        raise ValueError(f"{name}: weights that are non-finite or above {QMAX * SCALE_CEIL:.3g} "
                         "in magnitude have no int8 snapshot (has the model diverged?)")
    # q is computed with the fp16 scale that is stored, so w - q * scale is the whole error.
    scale = (amax / QMAX).clamp(min=SCALE_FLOOR).half()  # (R,)
    step = scale.float().unsqueeze(1)  # (R, 1)
    q = None if out is None else out[0]
    if q is None or (q.dtype, q.shape, q.device.type) != (torch.int8, w.shape, "cpu") \
            or not q.is_contiguous():
        q = torch.empty(w.shape, dtype=torch.int8)
    q2 = q.view(rows.shape)
    if rows.device.type == "cpu":
        # Row chunks that stay in the cache: the same operations per element as on the
        # whole matrix (the same bits), with one chunk-sized temporary instead of (R, C).
        for a, b in _row_chunks(*rows.shape):
            q2[a:b].copy_(rows[a:b].div(step[a:b]).round_().clamp_(-QMAX, QMAX))
    else:  # the arithmetic on the device; only the int8 result crosses
        q2.copy_(rows.div(step).round_().clamp_(-QMAX, QMAX).to(torch.int8))
    kept = None if out is None else out[1]
    if kept is not None and (kept.dtype, kept.shape, kept.device.type) == (
            torch.float16, scale.shape, "cpu"):
        scale = kept.copy_(scale)
    return q, scale.cpu().contiguous()


def quantize_int8(state_dict: Dict[str, Tensor],
                  out: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
    """The int8 snapshot payload of ``state_dict``: contiguous CPU tensors, ties kept.

    A floating tensor w with w.dim() >= 2 is quantised symmetrically per output channel
    (row r = w[r], dim 0, flattened):

        scale_r = max(max_j |w_rj| / 127, 2**-14)        stored as fp16
        q_rj    = clamp(round(w_rj / scale_r), -127, 127) stored as int8

    so |w_rj - q_rj * scale_r| <= scale_r / 2 (the fp16 scale is the one divided by). One
    scale per row, not per tensor: a row's error then scales with that row's own range,
    and one large row (an embedding of a frequent token) does not coarsen all the others.
    The floor keeps the fp16 scale normal and non-zero (see ``SCALE_FLOOR``). The scale
    goes under ``key + "@scale"``, shape (rows,).

    Any other floating tensor is stored as fp16 (biases and norms are few bytes, and
    int8 would hurt a LayerNorm gain more than it saves); others are copied unchanged.
    Inputs may be fp32, bf16 or fp16 on any device; the arithmetic runs in fp32 on that
    device and only the int8 result crosses to the CPU.

    Tied weights (equal storage pointer, dtype, shape and stride) are quantised once and
    their keys hold the same tensor objects, so torch.save stores them once.

    ``out``: an earlier payload that nothing reads any more, whose tensors are filled
    again where they fit (fresh model-sized memory costs more on a CPU than quantising).

    Raises ValueError on a weight matrix with a non-finite value or one above
    127 * 65504 in magnitude (no fp16 scale for it).
    """
    result: Dict[str, Tensor] = {}
    done: Dict[Tuple, Tuple[Tensor, ...]] = {}
    for name, t in state_dict.items():
        if SCALE_SUFFIX in name:
            raise ValueError(f"{name}: '{SCALE_SUFFIX}' in a state_dict key would clash with "
                             "the int8 payload's scale keys")
        t = t.detach()
        key = _tie_key(t)
        if key not in done:
            kept = None if out is None else out.get(name)
            if t.is_floating_point() and t.dim() >= 2:
                done[key] = _quantize_matrix(
                    name, t, None if out is None else (kept, out.get(name + SCALE_SUFFIX)))
            else:
                dtype = torch.float16 if t.is_floating_point() else t.dtype
                if kept is not None and (kept.dtype, kept.shape, kept.device.type) == (
                        dtype, t.shape, "cpu") and kept.is_contiguous():
                    done[key] = (kept.copy_(t),)
                else:  # copy=True: never hand back a live parameter for a background writer
                    done[key] = (t.to(device="cpu", dtype=dtype, copy=True).contiguous(),)
        result[name] = done[key][0]
        if len(done[key]) == 2:
            result[name + SCALE_SUFFIX] = done[key][1]
    return result


def is_int8_payload(state_dict: Dict[str, Tensor]) -> bool:
    """Whether ``state_dict`` is already what ``quantize_int8`` returns (it has scale keys,
    which ``quantize_int8`` refuses in its input)."""
    return any(name.endswith(SCALE_SUFFIX) for name in state_dict)


class Int8Matrix(NamedTuple):
    """One weight matrix of a payload, not yet dequantised: ``q`` int8 and its scale,
    shaped (R, 1, ..., 1) to broadcast against it. ``dequantize`` gives the bits
    ``dequantize_int8`` gives; on part of its rows (``rows``) the same bits of those rows,
    so a mean over snapshots can dequantise chunk by chunk (exchange/averaging.py)."""
    q: Tensor
    scale: Tensor

    def rows(self, first: int, end: int) -> "Int8Matrix":
        return Int8Matrix(self.q[first:end], self.scale[first:end])

    def dequantize(self, dtype: torch.dtype = torch.float32,
                   device: Optional[torch.device] = None) -> Tensor:
        q, scale = (self.q, self.scale) if device is None else (
            self.q.to(device), self.scale.to(device))
        return (q.float() * scale.float()).to(dtype)


def unpack_int8(payload: Dict[str, Tensor]) -> Dict[str, Union[Tensor, Int8Matrix]]:
    """The tensors of a payload of ``quantize_int8`` by their state_dict key: an
    ``Int8Matrix`` for each key with a ``key + "@scale"`` partner, the tensor itself for
    the others. Nothing is computed; tied entries share one ``Int8Matrix``.

    Raises ValueError on a scale without its tensor, or on a scale whose shape or dtype
    does not fit its tensor: a payload that is not what ``quantize_int8`` writes.
    """
    for name in payload:
        if name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] not in payload:
            raise ValueError(f"{name}: a scale without its tensor {name[: -len(SCALE_SUFFIX)]}")
    out: Dict[str, Union[Tensor, Int8Matrix]] = {}
    done: Dict[Tuple, Int8Matrix] = {}
    for name, t in payload.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = payload.get(name + SCALE_SUFFIX)
        if scale is None:
            out[name] = t
            continue
        key = _tie_key(t) + _tie_key(scale)
        if key not in done:
            done[key] = Int8Matrix(t, _scale_view(name, t, scale))
        out[name] = done[key]
    return out


def _scale_view(name: str, q: Tensor, scale: Tensor) -> Tensor:
    """``scale`` shaped to broadcast against ``q``: (R, 1, ..., 1); ValueError if it cannot."""
    if q.dtype != torch.int8 or q.dim() < 2:
        raise ValueError(f"{name}: a scale belongs to an int8 tensor of 2 or more dims "
                         f"(got {q.dtype}, shape {tuple(q.shape)})")
    rows = q.shape[0]
    if not scale.is_floating_point() or scale.shape not in (
            (rows,), (rows,) + (1,) * (q.dim() - 1)):
        raise ValueError(f"{name}{SCALE_SUFFIX}: expected a floating scale of shape ({rows},) "
                         f"for {name} of shape {tuple(q.shape)} (got {scale.dtype}, "
                         f"shape {tuple(scale.shape)})")
    return scale.reshape((rows,) + (1,) * (q.dim() - 1))


def dequantize_int8(payload: Dict[str, Tensor],
                    dtype: torch.dtype = torch.float32) -> Dict[str, Tensor]:
    """The state_dict a payload of ``quantize_int8`` stands for, floating tensors in ``dtype``.

        w_rj = q_rj * scale_r      (for each key with a ``key + "@scale"`` partner)

    computed in fp32, then cast to ``dtype``. Other floating tensors are cast to
    ``dtype``, non-floating ones pass unchanged, and the "@scale" keys are dropped.
    Entries that share a tensor in the payload (tied weights, as torch.load returns
    them) are dequantised once and share the result. Output tensors are new: the payload
    can be freed.

    Raises ValueError as ``unpack_int8`` does: a payload that is not what
    ``quantize_int8`` writes.
    """
    out: Dict[str, Tensor] = {}
    done: Dict[Tuple, Tensor] = {}
    for name, t in unpack_int8(payload).items():
        key = (id(t),) if isinstance(t, Int8Matrix) else _tie_key(t)  # one object a tie
        if key not in done:
            if isinstance(t, Int8Matrix):
                done[key] = t.dequantize(dtype)
            elif t.is_floating_point():
                done[key] = t.to(dtype=dtype, copy=True)
            else:
                done[key] = t.clone()
        out[name] = done[key]
    return out


def payload_nbytes(payload: Dict[str, Tensor]) -> int:
    """Bytes of the tensors' storages, each shared storage counted once: what torch.save
    writes, less its zip headers and pickled keys."""
    seen: Dict[Tuple, int] = {}
    for t in payload.values():
        storage = t.untyped_storage()
        seen[(t.device, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())
