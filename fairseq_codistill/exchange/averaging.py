"""Sharing weights instead of logits: LocalSGD and DiLoCo through the same exchange.

Every ``--codistill-interval`` (K) updates each model publishes its weights as a snapshot
(the format, stores, leases, CRCs and dtypes of codistillation: one model per K updates,
the same bytes), waits up to ``--codistill-wait-for-peers`` seconds for the other models'
snapshots of the same update, and averages the n of them:

- ``localsgd`` (Stich 2018; Lin et al. 2020): its weights become the mean.
- ``diloco`` (Douillard et al. 2023): with theta the last shared weights, ``theta - mean``
  is the outer gradient, and an outer SGD step with Nesterov momentum (``--codistill-outer-lr``
  0.7, ``--codistill-outer-momentum`` 0.5 by default; DiLoCo's are 0.7 and 0.9) gives the
  next shared weights, which every model continues from. With outer lr 1 and no momentum
  it is LocalSGD.

Each model keeps its own (inner) optimizer state. Every model averages the same n
snapshots, its own as its peers read it, summed in model-id order, so all of them hold
the same weights afterwards, bit for bit. A model missing at an averaging step is waited
for once, then left out with a warning until it publishes again; one whose lease says it
finished training (it reached its --max-update or --stop-time-hours) is not waited for. With ``--codistill-async``
nothing is waited for: each model averages with the newest snapshot each peer has
published (``WeightAveraging``). The weights averaged are those the optimizer steps: the
fp32 master copies under mixed precision (the caller hands them over). No fairseq import.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

from fairseq_codistill.exchange import lease as leases
from fairseq_codistill.exchange.peers import (Exchange, ExchangeConfig, FinishedPeers, all_ranks_min,
                                             broadcast_from_rank0)
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
# --codistill-async without --codistill-wait-for-peers: the most seconds a model looks for
# its peers' leases at start-up (a peer that started first answers at once)
ASYNC_START_SECONDS = 10.0
CHUNK = 1 << 17  # elements of a tensor summed at a time on a CPU: 512 KB of fp32, in L2


def weight_shapes(weights: Weights) -> Dict[str, List[int]]:
    """The fingerprint of what a model averages: each weight's name and shape. Models
    compare theirs through their leases before training (``lease.check_agrees``)."""
    return {name: list(t.shape) for name, t in sorted(weights.items())}


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
    stepped on the outer gradient ``theta - mean`` (DiLoCo's lr 0.7 and momentum 0.9; the
    default momentum here is 0.5: --codistill-outer-momentum says why). It is ``torch.optim.SGD(nesterov=True)``'s
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

    With ``--codistill-async`` (Async Local-SGD, Liu et al. 2024) nothing waits: at each of
    its own K-th updates a model publishes, then averages with the newest snapshot each peer
    has published (localsgd: the mean of its weights and those; diloco: its own outer step,
    its own theta and momentum, on that mean), and logs each one's staleness (our update
    minus the peer's). Each peer version is averaged at most once: a model faster than its
    peer does not pull itself back to the same old point at every step, and with no fresh
    peer snapshot it keeps its weights (diloco its theta and momentum too, so that its next
    outer gradient spans every inner step since) and goes on. The versions averaged are
    kept in the checkpoint: a resumed model does not average again what it averaged before.

    Before its first update a model checks its peers (``_check_peers``): it waits up to
    --codistill-wait-for-peers (asynchronous without it: ``ASYNC_START_SECONDS``) for a
    lease of each peer written since its start, or still live, and refuses to train,
    naming the flag, if one disagrees on the interval, --codistill-async or the weights'
    names and shapes (``shapes``, the fingerprint; None: not compared). The model that
    starts second is refused by ``lease.acquire`` and leaves its lease behind for this
    check, so both stop before training. A peer that starts after that wait is checked by
    its own start-up only; should a snapshot of another architecture reach the average
    anyway (a peer whose check never saw our lease: a store outage, a leftover of an
    earlier run in the same --codistill-dir), it is left out with one error per peer, not
    a stop: the run may have checkpoints worth more than that peer.
    """

    def __init__(self, cfg: ExchangeConfig, meta: Optional[dict] = None, group=None,
                 shapes: Optional[Dict[str, List[int]]] = None):
        super().__init__(cfg, meta, group, terms=dict(
            interval=cfg.interval, asynchronous=cfg.asynchronous, shapes=shapes))
        self.outer: Optional[OuterSGD] = None  # diloco: built at the first step
        self._outer_state: Optional[dict] = None  # from a checkpoint, until then
        self._given_up: Dict[int, int] = {}  # peer -> its newest update when we stopped waiting
        self.last_averaged: List[int] = []  # the models in the last average
        self.staleness: Dict[int, int] = {}  # of the last average: peer -> our update - its
        self.averaged_versions: Dict[int, int] = {}  # async: peer -> its newest version averaged
        self._mismatched: set = set()  # peers whose architecture was reported
        self._peers_checked = False  # the start-up check (_check_peers)
        self.seconds: Dict[str, float] = {}  # of the last averaging step: wait, read, average
        self._cast: Optional[Weights] = None  # the CPU copy published at the last step
        # (for int8 the quantised payload: its peers average what they read of it)

    def step(self, num_updates: int, weights: Callable[[], Weights],
             changed: Callable[[], None] = lambda: None) -> None:
        if not self._peers_checked:
            # before the first update: also where a resumed run's first call repeats the
            # update its checkpoint ended on (which _begin skips)
            self._check_peers()
        if not self._begin(num_updates):
            return
        if self.cfg.method == "diloco" and self.outer is None:
            self._start_outer(weights())
        self._started = True
        if num_updates > 0 and num_updates % self.cfg.interval == 0:
            if self.average(num_updates, weights()):
                changed()

    def _check_peers(self) -> None:
        """Before the first update: the peers' leases against ours (the class docstring);
        every rank raises rank 0's ``ValueError``."""
        error, missing = None, []
        if self.is_writer:
            seconds = self.cfg.wait_for_peers or (ASYNC_START_SECONDS if self.cfg.asynchronous else 0.0)
            try:
                missing = leases.check_peers(self.store, self.lease.lease, self.peer_ids, seconds)
            except ValueError as e:
                error = str(e)
            if missing:
                newest = self._newest()
                for j in missing:  # waited for once, here: not again before it publishes
                    self._given_up[j] = newest.get(j, -1)
                logger.info("codistill: no lease of model(s) %s after %.0fs at start-up: "
                            "training on; a model that starts later with other settings is "
                            "refused at its start-up", missing, seconds)
        error = broadcast_from_rank0(error, self.group, self.world)
        self._peers_checked = True
        if error is not None:
            raise ValueError(error)

    def _start_outer(self, weights: Weights) -> None:
        """theta: the weights at the first step (the initial weights, which every model
        shares), or the shared weights a checkpoint saved."""
        self.outer = OuterSGD(weights, self.cfg.outer_lr, self.cfg.outer_momentum)
        if self._outer_state is not None:
            self.outer.load_state_dict(self._outer_state)
            self._outer_state = None

    # -- one averaging step ----------------------------------------------------------
    def average(self, num_updates: int, weights: Weights) -> bool:
        """Publish ``weights``; take the peers' snapshots of ``num_updates`` (waiting for
        them) or, asynchronous, each peer's newest not averaged before; overwrite
        ``weights`` with the average (localsgd) or the outer step (diloco). False, the
        weights untouched, when an asynchronous step finds no fresh snapshot."""
        times = [time.monotonic()]
        own = self._publish(num_updates, weights)
        times.append(time.monotonic())
        versions = self._fresh(num_updates) if self.cfg.asynchronous else \
            dict.fromkeys(self._wait_for(num_updates), num_updates)
        times.append(time.monotonic())
        states = self._read(num_updates, versions, weights)
        times.append(time.monotonic())
        self.staleness = {j: num_updates - versions[j] for j in sorted(states)}
        if self.cfg.asynchronous:
            self.averaged_versions.update({j: versions[j] for j in states})
        self.last_averaged = sorted([self.cfg.model_id, *states])
        if states or not self.cfg.asynchronous:
            states[self.cfg.model_id] = own
            self._average_into(weights, [states[j] for j in self.last_averaged])
        times.append(time.monotonic())
        self.seconds = {k: b - a for k, a, b in zip(("publish", "wait", "read", "average"), times, times[1:])}
        self._log_average(num_updates)
        return len(self.last_averaged) > 1 or not self.cfg.asynchronous

    def _publish(self, num_updates: int, weights: Weights) -> Parts:
        """Queue the snapshot of ``weights`` (the write runs in the background); returns
        this model's part of the average: what its peers read of that snapshot."""
        self.wait_for_write()  # the last write's tensors are filled again
        if self.cfg.dtype == "int8":  # quantised here, once: the bits its peers average
            own = self._cast = quantize_int8(weights, out=self._cast)
        else:
            own = self._cast = cast_state_dict(weights, self.cfg.dtype, out=self._cast)
        self.last_published = num_updates
        if self.is_writer:
            self._queue_write(num_updates, own)
        return unpack_int8(own) if self.cfg.dtype == "int8" else own

    def _average_into(self, weights: Weights, models: List[Parts]) -> None:
        """``weights`` = the mean of ``models`` (localsgd) or the outer step on it (diloco)."""
        # on the model's device: a GPU sums and steps a model in a fraction of a CPU's time
        with torch.no_grad():
            # into the weights themselves (the states are copies: cast_state_dict, snapshots)
            device = next(iter(weights.values())).device
            new = mean_of(models, device=device, out=weights) if self.outer is None \
                else self.outer.step(models, out=weights)
            for name, tensor in weights.items():
                if new[name] is not tensor:  # a weight that is not fp32
                    tensor.copy_(new[name])

    def _log_average(self, num_updates: int) -> None:
        if len(self.last_averaged) == 1 and self.cfg.asynchronous:
            logger.info("codistill: no peer snapshot to average at update %d (async: each peer "
                        "version is averaged once): weights kept", num_updates)
            return
        seen = "" if not self.cfg.asynchronous else ", async: " + ", ".join(
            f"model {j} at its update {num_updates - s}, staleness {s}" for j, s in self.staleness.items())
        logger.info("codistill: averaged models %s at update %d (%s%s): published %.2fs, waited "
                    "%.2fs, read %.2fs, %s %.2fs", self.last_averaged, num_updates, self.cfg.method,
                    seen, self.seconds["publish"], self.seconds["wait"], self.seconds["read"],
                    "mean" if self.outer is None else "mean and outer step", self.seconds["average"])

    def _fresh(self, num_updates: int) -> Dict[int, int]:
        """Asynchronous: each peer's newest snapshot in the store, where it is newer than
        the one averaged before (rank 0 looks, at once; every rank gets its choice)."""
        fresh: Dict[int, int] = {}
        if self.rank == 0:
            newest = self._newest()
            fresh = {j: u for j, u in newest.items() if u > self.averaged_versions.get(j, -1)}
            self._warn_missing_peers(num_updates, [j for j in self.peer_ids if newest.get(j, -1) < 0])
        return {int(j): int(u) for j, u in broadcast_from_rank0(fresh, self.group, self.world).items()}

    def _wait_for(self, num_updates: int) -> List[int]:
        """The peers whose snapshot of ``num_updates`` is in the store (rank 0 looks,
        waiting up to --codistill-wait-for-peers for the others; every rank gets its list)."""
        present: List[int] = []
        if self.rank == 0:
            deadline = time.monotonic() + self.cfg.wait_for_peers
            finished = FinishedPeers(self.store)
            while True:
                versions = self._versions()
                newest = {j: max(v, default=-1) for j, v in versions.items()}
                present = [j for j in self.peer_ids if num_updates in versions.get(j, ())]
                awaited = [j for j in self.peer_ids if j not in present and j not in finished.ids
                           and self._given_up.get(j) != newest.get(j, -1)]
                if not awaited or time.monotonic() >= deadline:
                    break
                if finished.look(awaited):
                    continue
                time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            missing = [j for j in self.peer_ids if j not in present]
            if missing:
                for j in missing:
                    self._given_up[j] = newest.get(j, -1)
                if finished.ids:
                    logger.warning(
                        "codistill: model(s) %s finished training before update %d (their "
                        "leases say so): averaging the %d model(s) present without them",
                        finished.ids, num_updates, len(present) + 1)
                if set(missing) - set(finished.ids):
                    logger.warning(
                        "codistill: model(s) %s have no snapshot of update %d after %.0fs: "
                        "averaging the %d model(s) present; they are not waited for again until "
                        "they publish (are they running, with --codistill-dir %s?)",
                        [j for j in missing if j not in finished.ids], num_updates,
                        self.cfg.wait_for_peers, len(present) + 1, self.store.url)
            self._warn_missing_peers(num_updates, [j for j in missing if newest.get(j, -1) < 0])
        return [int(j) for j in broadcast_from_rank0(present, self.group, self.world)]

    def _newest(self) -> Dict[int, int]:
        """Each peer's newest update in the store (-1: none); {} while it cannot be listed."""
        return {j: max(v, default=-1) for j, v in self._versions().items()}

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

    def _read(self, num_updates: int, versions: Dict[int, int], weights: Weights) -> Dict[int, Parts]:
        """The snapshots ``versions`` (peer -> its update) that every rank read and can
        average (int8 ones as read, dequantised as they are summed); one that is pruned,
        replaced or bad as it is read is left out with a warning."""
        read: Dict[int, Optional[Parts]] = {}
        present = sorted(versions)
        for j in present:
            key = snapshot_key(j, versions[j])
            try:
                snap = read_snapshot(self.store, key, dequantize=False)
                if snap.model_id != j or snap.num_updates != versions[j]:
                    raise SnapshotError(f"{key} claims to be model {snap.model_id} at update "
                                        f"{snap.num_updates}")
                parts = unpack_int8(snap.state_dict) if snap.dtype == "int8" else snap.state_dict
                _check_same_weights(key, parts, weights)
                read[j] = parts
                self.bytes_read += snap.nbytes
            except Exception as e:  # SnapshotError, a store that went down ...
                self._leave_out(j, num_updates, e)
                read[j] = None
        status = all_ranks_min([1 if read[j] is not None else -1 for j in present], self.group,
                          self.world, next(iter(weights.values())).device)
        self.num_loads += sum(s == 1 for s in status)
        return {j: read[j] for j, s in zip(present, status) if s == 1}

    def _leave_out(self, peer_id: int, num_updates: int, error: Exception) -> None:
        """Say why a peer's snapshot is not averaged: another architecture once per peer
        (an error: the start-up check should have refused one of the two), the rest each time."""
        if isinstance(error, ArchitectureMismatch):
            if peer_id in self._mismatched:
                return
            self._mismatched.add(peer_id)
            logger.error("codistill: leaving model %d out of every average from update %d on "
                         "(said once): %s", peer_id, num_updates, error)
            return
        logger.warning("codistill: leaving model %d out of the average at update %d: %s",
                       peer_id, num_updates, error)

    def metrics(self) -> Dict[str, float]:
        """Also, of the last averaging step: ``averaged_models``, how many were averaged
        (this one included), and ``average_wait``, the seconds it waited for them; async,
        ``average_staleness``, our update minus the peers' snapshots' (mean over those
        averaged; absent when none was)."""
        if not self.last_averaged:
            return super().metrics()
        out = {**super().metrics(), "averaged_models": len(self.last_averaged),
               "average_wait": self.seconds["wait"]}
        if self.cfg.asynchronous and self.staleness:
            out["average_staleness"] = sum(self.staleness.values()) / len(self.staleness)
        return out

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.outer is not None:
            state["outer"] = self.outer.state_dict()
        if self.cfg.asynchronous:
            state["averaged_versions"] = {str(j): v for j, v in self.averaged_versions.items()}
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
        self.averaged_versions = {int(j): int(v) for j, v in (state.get("averaged_versions") or {}).items()}

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


class ArchitectureMismatch(SnapshotError):
    """A snapshot whose weights differ from ours by name or shape."""


def _check_same_weights(key: str, theirs: Parts, ours: Weights) -> None:
    """Averaging needs the same tensors, by name and shape, in every model."""
    for name, tensor in ours.items():
        other = theirs.get(name)
        other = None if other is None else _tensor(other)
        if other is None or other.shape != tensor.shape:
            raise ArchitectureMismatch(
                f"{key} has {'no ' + name if other is None else f'{name} of shape {tuple(other.shape)}'}"
                f" where this model has {tuple(tensor.shape)}: averaging needs models of one "
                "architecture (--codistill-method distill codistills models that differ)")
