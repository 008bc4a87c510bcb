"""Sharing weights instead of logits: LocalSGD and DiLoCo through the same exchange.

Every ``--codistill-interval`` (K) updates each model publishes its weights as a snapshot
(the format, stores, leases, CRCs and dtypes of codistillation: one model per K updates,
the same bytes), waits up to ``--codistill-wait-for-peers`` seconds for the other models'
snapshots of the same update, and averages the n of them:

- ``localsgd`` (Stich 2018; Lin et al. 2020): its weights become the mean.
- ``diloco`` (Douillard et al. 2023): with theta the last shared weights, ``theta - mean``
  is the outer gradient, and an outer SGD step with Nesterov momentum (``--codistill-outer-lr``
  0.7, ``--codistill-outer-momentum`` 0.9, DiLoCo's values) gives the next shared weights,
  which every model continues from. With outer lr 1 and no momentum it is LocalSGD.

Each model keeps its own (inner) optimizer state. Every model averages the same n
snapshots, its own as its peers read it, summed in model-id order, so all of them hold
the same weights afterwards, bit for bit. A model missing at an averaging step is waited
for once, then left out with a warning until it publishes again. The weights averaged
are those the optimizer steps: the fp32 master copies under mixed precision (the
caller hands them over). No fairseq import.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

from fairseq_codistill.exchange.peers import Exchange, ExchangeConfig, all_ranks_min, broadcast_from_rank0
from fairseq_codistill.exchange.quantize import Int8Matrix, quantize_int8, unpack_int8
from fairseq_codistill.exchange.snapshot import (
    SnapshotError,
    cast_state_dict,
    list_snapshots,
    read_snapshot,
    snapshot_key,
)

logger = logging.getLogger(__name__)

Weights = Dict[str, torch.Tensor]
# A model as it is averaged: a snapshot's weight matrices may still be int8 (Int8Matrix),
# dequantised chunk by chunk as they are summed.
Part = Union[torch.Tensor, Int8Matrix]
Parts = Dict[str, Part]
POLL_SECONDS = 0.1  # between listings while waiting for the other models
CHUNK = 1 << 17  # elements of a tensor summed at a time on a CPU: 512 KB of fp32, in L2


def _tensor(part: Part) -> torch.Tensor:
    return part.q if isinstance(part, Int8Matrix) else part


def _chunks(*parts: Part) -> Iterator[Tuple[Part, ...]]:
    """Views of ``parts`` (of one shape), CHUNK elements at a time on a CPU, so that a
    chunk stays in the cache through all the operations on it: the same operations per
    element (the same bits) for a fraction of the memory traffic (a mean of two fp16
    tensors of 100M elements, one core: 0.07 s, against 0.33 s on the whole tensors).
    Chunks end at a whole row where a part is an ``Int8Matrix`` (one scale a row), which
    is then dequantised a chunk at a time instead of into a model-sized copy. Whole
    tensors elsewhere (a GPU, tensors not contiguous or on two devices)."""
    tensors = [_tensor(p) for p in parts]
    if not all(t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        yield parts
        return
    n = tensors[0].numel()
    q = next((p.q for p in parts if isinstance(p, Int8Matrix)), None)
    width = n // q.shape[0] if q is not None and n else 1  # elements in a row
    step = max(1, CHUNK // width) * width
    flat = [t.view(-1) for t in tensors]
    for i in range(0, n, step):
        rows = (i // width, min(n, i + step) // width)
        yield tuple(p.rows(*rows) if isinstance(p, Int8Matrix) else f[i:i + step]
                    for p, f in zip(parts, flat))


def _target(out: Optional[Weights], name: str, like: Part,
            device: Optional[torch.device]) -> torch.Tensor:
    """``out[name]`` where it can hold an fp32 tensor shaped as ``like``, else a new one."""
    like = _tensor(like)
    target = None if out is None else out.get(name)
    if target is not None and target.dtype == torch.float32 and target.shape == like.shape:
        return target
    return torch.empty(like.shape, dtype=torch.float32, device=device or like.device)


def _value(part: Part, total: torch.Tensor) -> torch.Tensor:
    """``part`` on ``total``'s device, in a shape that adds to it; int8 dequantised."""
    if isinstance(part, Int8Matrix):
        return part.dequantize(device=total.device).view(total.shape)
    return part.to(total.device)  # fp16 or bf16 is cast as it is added


def _mean_into(total: torch.Tensor, parts: List[Part]) -> None:
    """``total`` = the mean of ``parts``, summed in their order (the same bits everywhere)."""
    total.copy_(_value(parts[0], total))
    for part in parts[1:]:
        total.add_(_value(part, total))
    total.div_(len(parts))


def mean_of(states: List[Parts], device: Optional[torch.device] = None,
            out: Optional[Weights] = None) -> Weights:
    """The elementwise mean in fp32 on ``device`` (default: where the tensors are), summed
    in the order given: every model passes the same snapshots in the same order, so all
    compute the same bits. ``out``: tensors to hold it (a model's fp32 weights, which no
    state in ``states`` may share), so that no model-sized buffer is allocated: on a CPU
    allocating it costs more than the sums."""
    result = {}
    for name, first in states[0].items():
        result[name] = _target(out, name, first, device)
        for total, *parts in _chunks(result[name], *(state[name] for state in states)):
            _mean_into(total, parts)
    return result


class OuterSGD:
    """DiLoCo's outer optimiser over the shared weights theta: SGD with Nesterov momentum
    stepped on the outer gradient ``theta - mean``. It is ``torch.optim.SGD(nesterov=True)``'s
    update, operation for operation (the same bits: tests/test_averaging.py), written out
    because torch's allocates a model-sized tensor at every step and passes over the
    weights once per operation; here the mean and the step run chunk by chunk in the
    cache (``_chunks``), one pass over the model."""

    def __init__(self, theta: Weights, lr: float, momentum: float):
        self.names = list(theta)
        self.lr, self.momentum = lr, momentum
        self.theta = [theta[n].detach().float().clone() for n in self.names]
        self.buffers: Optional[List[torch.Tensor]] = None  # momentum, from the first step

    def step(self, states: List[Parts], out: Optional[Weights] = None) -> Weights:
        """The next shared weights, from the models' weights ``states`` (their mean as
        ``mean_of`` takes it): written into ``out`` as ``mean_of`` writes (and kept as theta)."""
        first = self.momentum and self.buffers is None
        if first:
            self.buffers = [torch.empty_like(t) for t in self.theta]
        result = {}
        for i, (name, theta) in enumerate(zip(self.names, self.theta)):
            result[name] = _target(out, name, theta, theta.device)
            buffers = (self.buffers[i],) if self.momentum else ()
            for th, g, *rest in _chunks(theta, result[name], *buffers, *(s[name] for s in states)):
                buf, parts = (rest[0], rest[1:]) if buffers else (None, rest)
                _mean_into(g, parts)
                torch.sub(th, g, out=g)  # the outer gradient (DiLoCo, Algorithm 1)
                if buf is not None:
                    buf.copy_(g) if first else buf.mul_(self.momentum).add_(g)
                    g.add_(buf, alpha=self.momentum)  # Nesterov
                th.add_(g, alpha=-self.lr)
                g.copy_(th)
        return result

    def state_dict(self) -> dict:
        return {"theta": dict(zip(self.names, self.theta)),
                "momentum": None if self.buffers is None else dict(zip(self.names, self.buffers))}

    def load_state_dict(self, state: dict) -> None:
        for name, theta in zip(self.names, self.theta):
            theta.copy_(state["theta"][name])
        momentum = state.get("momentum")
        if "optimizer" in state:  # saved by torch.optim.SGD (fairseq-codistill before 2026-12-02)
            saved = state["optimizer"]["state"]
            momentum = {n: saved[i]["momentum_buffer"] for i, n in enumerate(self.names)} \
                if saved and self.momentum else None
        self.buffers = None if momentum is None else [
            momentum[n].detach().float().clone() for n in self.names]


class WeightAveraging(Exchange):
    """One model's side of LocalSGD or DiLoCo (``--codistill-method localsgd|diloco``).

    Call ``step(num_updates, weights, changed)`` once before every update, with
    ``weights()`` giving the tensors the optimizer steps by name (read, then overwritten
    in place at an averaging step) and ``changed()`` run after they were overwritten (to
    copy fp32 masters into a half-precision model). The ranks of a data-parallel job
    average the same snapshots: rank 0 chooses, every rank reads.
    """

    def __init__(self, cfg: ExchangeConfig, meta: Optional[dict] = None, group=None):
        super().__init__(cfg, meta, group)
        self.outer: Optional[OuterSGD] = None  # diloco: built at the first step
        self._outer_state: Optional[dict] = None  # from a checkpoint, until then
        self._given_up: Dict[int, int] = {}  # peer -> its newest update when we stopped waiting
        self.last_averaged: List[int] = []  # the models in the last average
        self.seconds: Dict[str, float] = {}  # of the last averaging step: wait, read, average
        self._cast: Optional[Weights] = None  # the CPU copy published at the last step
        # (for int8 the quantised payload: its peers average what they read of it)

    def step(self, num_updates: int, weights: Callable[[], Weights],
             changed: Callable[[], None] = lambda: None) -> None:
        if not self._begin(num_updates):
            return
        if self.cfg.method == "diloco" and self.outer is None:
            self._start_outer(weights())
        self._started = True
        if num_updates > 0 and num_updates % self.cfg.interval == 0:
            self.average(num_updates, weights())
            changed()

    def _start_outer(self, weights: Weights) -> None:
        """theta: the weights at the first step (the initial weights, which every model
        shares), or the shared weights a checkpoint saved."""
        self.outer = OuterSGD(weights, self.cfg.outer_lr, self.cfg.outer_momentum)
        if self._outer_state is not None:
            self.outer.load_state_dict(self._outer_state)
            self._outer_state = None

    # -- one averaging step ----------------------------------------------------------
    def average(self, num_updates: int, weights: Weights) -> None:
        """Publish ``weights``, wait for the others' snapshots of ``num_updates``, and
        overwrite ``weights`` with the average (localsgd) or the outer step (diloco)."""
        times = [time.monotonic()]
        self.wait_for_write()  # the last write's tensors are filled again
        if self.cfg.dtype == "int8":  # quantised here, once: the bits its peers average
            own = self._cast = quantize_int8(weights, out=self._cast)
        else:
            own = self._cast = cast_state_dict(weights, self.cfg.dtype, out=self._cast)
        self.last_published = num_updates
        if self.is_writer:
            self._queue_write(num_updates, own)
        times.append(time.monotonic())
        present = self._wait_for(num_updates)
        times.append(time.monotonic())
        states = self._read(num_updates, present, weights)
        times.append(time.monotonic())
        states[self.cfg.model_id] = unpack_int8(own) if self.cfg.dtype == "int8" else own
        ids = sorted(states)
        # on the model's device: a GPU sums and steps a model in a fraction of a CPU's time
        with torch.no_grad():
            # into the weights themselves (the states are copies: cast_state_dict, snapshots)
            models, device = [states[j] for j in ids], next(iter(weights.values())).device
            new = mean_of(models, device=device, out=weights) if self.outer is None \
                else self.outer.step(models, out=weights)
            for name, tensor in weights.items():
                if new[name] is not tensor:  # a weight that is not fp32
                    tensor.copy_(new[name])
        times.append(time.monotonic())
        self.last_averaged = ids
        # publish: the CPU copy in the snapshot dtype (the write runs in the background)
        self.seconds = {k: b - a for k, a, b in zip(("publish", "wait", "read", "average"), times, times[1:])}
        logger.info("codistill: averaged models %s at update %d (%s): published %.2fs, waited "
                    "%.2fs, read %.2fs, %s %.2fs", ids, num_updates, self.cfg.method,
                    self.seconds["publish"], self.seconds["wait"], self.seconds["read"],
                    "mean" if self.outer is None else "mean and outer step", self.seconds["average"])

    def _wait_for(self, num_updates: int) -> List[int]:
        """The peers whose snapshot of ``num_updates`` is in the store (rank 0 looks,
        waiting up to --codistill-wait-for-peers for the others; every rank gets its list)."""
        present: List[int] = []
        if self.rank == 0:
            deadline = time.monotonic() + self.cfg.wait_for_peers
            while True:
                versions = self._versions()
                newest = {j: max(v, default=-1) for j, v in versions.items()}
                present = [j for j in self.peer_ids if num_updates in versions.get(j, ())]
                awaited = [j for j in self.peer_ids if j not in present
                           and self._given_up.get(j) != newest.get(j, -1)]
                if not awaited or time.monotonic() >= deadline:
                    break
                time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            missing = [j for j in self.peer_ids if j not in present]
            if missing:
                for j in missing:
                    self._given_up[j] = newest.get(j, -1)
                logger.warning(
                    "codistill: model(s) %s have no snapshot of update %d after %.0fs: "
                    "averaging the %d model(s) present; they are not waited for again until "
                    "they publish (are they running, with --codistill-dir %s?)", missing,
                    num_updates, self.cfg.wait_for_peers, len(present) + 1, self.store.url)
            self._warn_missing_peers(num_updates, [j for j in missing if newest.get(j, -1) < 0])
        return [int(j) for j in broadcast_from_rank0(present, self.group, self.world)]

    def _versions(self) -> Dict[int, List[int]]:
        """The updates of each peer's snapshots in the store; {} while it cannot be listed."""
        try:
            out = {j: [i.num_updates for i in list_snapshots(self.store, j)] for j in self.peer_ids}
        except Exception as e:
            if self._outage.failed():
                logger.warning("codistill: cannot list %s (%s); waiting for it to answer",
                               self.store.url, e)
            return {}
        self._store_answers()
        return out

    def _read(self, num_updates: int, present: List[int], weights: Weights) -> Dict[int, Parts]:
        """The snapshots of ``present`` that every rank read and can average (int8 ones
        as read, dequantised as they are summed)."""
        read: Dict[int, Optional[Parts]] = {}
        for j in present:
            key = snapshot_key(j, num_updates)
            try:
                snap = read_snapshot(self.store, key, dequantize=False)
                if snap.model_id != j or snap.num_updates != num_updates:
                    raise SnapshotError(f"{key} claims to be model {snap.model_id} at update "
                                        f"{snap.num_updates}")
                parts = unpack_int8(snap.state_dict) if snap.dtype == "int8" else snap.state_dict
                _check_same_weights(key, parts, weights)
                read[j] = parts
                self.bytes_read += snap.nbytes
            except Exception as e:  # SnapshotError, a store that went down ...
                logger.warning("codistill: leaving model %d out of the average at update %d: %s",
                               j, num_updates, e)
                read[j] = None
        status = all_ranks_min([1 if read[j] is not None else -1 for j in present], self.group,
                          self.world, next(iter(weights.values())).device)
        self.num_loads += sum(s == 1 for s in status)
        return {j: read[j] for j, s in zip(present, status) if s == 1}

    def metrics(self) -> Dict[str, float]:
        """Also, of the last averaging step: ``averaged_models``, how many were averaged
        (this one included), and ``average_wait``, the seconds it waited for them."""
        if not self.last_averaged:
            return super().metrics()
        return {**super().metrics(), "averaged_models": len(self.last_averaged),
                "average_wait": self.seconds["wait"]}

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.outer is not None:
            state["outer"] = self.outer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Counters resume; diloco's shared weights and momentum are restored at the next step."""
        super().load_state_dict(state)
        # The average of update U is taken once: a checkpoint saved after it (fairseq saves
        # after the optimizer step that averaged) resumes with step(U) as a repeat.
        self.last_step = self.last_published
        # Copies: the state may be memory-mapped from a checkpoint file that the trainer
        # overwrites in place (fairseq copies each new checkpoint onto checkpoint_last.pt).
        self._outer_state = _copied(state.get("outer"))
        self.outer = None

    def _never_had_a_peer(self) -> str:
        return "never averaged with another model: it trained alone"


def _copied(value):
    """``value`` with every tensor in it copied into memory of its own."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    return value


def _check_same_weights(key: str, theirs: Parts, ours: Weights) -> None:
    """Averaging needs the same tensors, by name and shape, in every model."""
    for name, tensor in ours.items():
        other = theirs.get(name)
        other = None if other is None else _tensor(other)
        if other is None or other.shape != tensor.shape:
            raise SnapshotError(
                f"{key} has {'no ' + name if other is None else f'{name} of shape {tuple(other.shape)}'}"
                f" where this model has {tuple(tensor.shape)}: averaging needs models of one "
                "architecture (--codistill-method distill codistills models that differ)")
