"""The exchange's policies: when one model publishes its snapshot, when it reads its
peers', which version it uses, and what it tells the user when a peer is missing.

``Exchange`` holds what every policy shares: the store, this model's lease, publishing in
the background, and closing. ``PeerExchange`` is codistillation's policy (``--codistill-method
distill``): peers' newest snapshots are loaded as models, never waited for. Beside it in
this package: ``averaging`` (the policies that share weights instead: LocalSGD, DiLoCo),
``snapshot`` (the format), ``storage`` (where the bytes go: a directory, or an object store
such as S3), ``lease`` (who trains as which model). No fairseq import: every front end
drives an exchange through ``fairseq_codistill.codistillation.Codistillation``.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from fairseq_codistill.exchange import lease as leases
from fairseq_codistill.core.precision import PEER_DTYPES, peer_dtype
from fairseq_codistill.exchange.snapshot import (
    SNAPSHOT_DTYPES,
    Snapshot,
    SnapshotError,
    cast_state_dict,
    list_snapshots,
    read_snapshot,
    write_snapshot,
)
from fairseq_codistill.exchange.storage import Outage, model_prefix, open_store, replaced_while_read

logger = logging.getLogger(__name__)

TOPOLOGIES = ("all", "ring")
# distill: codistillation (the peers' logits); localsgd, diloco: the models' weights.
METHODS = ("distill", "localsgd", "diloco")
AVERAGING_METHODS = ("localsgd", "diloco")
# A peer with no snapshot after this many exchanges gets a warning at each exchange.
SILENT_EXCHANGES = 3


# Exchanges not closed yet, closed at interpreter exit (held weakly: an exchange dropped
# without close() frees its peer models).
_OPEN: "weakref.WeakSet[PeerExchange]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for exchange in list(_OPEN):
        exchange.close()


def _finish_dropped(writer: concurrent.futures.ThreadPoolExecutor,
                    lease: Optional[leases.LeaseHolder]) -> None:
    """What ``close`` must not skip, for an exchange collected (or alive at exit) without
    it: the pending snapshot write finishes, and the lease is marked finished."""
    writer.shutdown(wait=True)
    if lease is not None:
        lease.release()


class FinishedPeers:
    """While a step waits for peers (an averaging step; codistillation with
    --codistill-max-lead): those whose lease is marked finished, read at most once per
    ``leases.POLL_SECONDS``. They ended normally (at their --max-update or
    --stop-time-hours) and publish no more, so they are not waited for. A preempted or
    crashed peer's lease is not finished: it is waited for, as it may come back; a restart
    takes its lease anew, unfinished."""

    def __init__(self, store):
        self.store = store
        self.ids: List[int] = []
        self._due = time.monotonic() + leases.POLL_SECONDS

    def look(self, awaited: List[int]) -> bool:
        """When due, read the leases of ``awaited`` not known to have finished; True if it
        read them (the caller lists the store again before it sleeps)."""
        if time.monotonic() < self._due:
            return False
        for j in awaited:
            if j in self.ids:
                continue
            try:
                lease = leases.read_lease(self.store, j)
            except OSError:  # the store does not answer: keep waiting, as for a listing
                continue
            if lease is not None and lease.finished:
                self.ids.append(j)
        self._due = time.monotonic() + leases.POLL_SECONDS
        return True


def peer_ids(model_id: int, num_models: int, topology: str = "all") -> List[int]:
    """The models that ``model_id`` codistills with: every other one, or its ring successor."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES} (got {topology!r})")
    if topology == "ring":
        return [(model_id + 1) % num_models]
    return [j for j in range(num_models) if j != model_id]


# --------------------------------------------------------------------------------------
# One model's side of the exchange


@dataclass
class ExchangeConfig:
    """One model's side of the exchange; the defaults and meanings of these are the
    --codistill-* options' (``fairseq_codistill.options``)."""

    root: str
    model_id: int
    num_models: int
    topology: str
    interval: int
    dtype: str  # of the published snapshots
    peer_dtype: str  # that the peers run in: one of precision.PEER_DTYPES
    max_staleness: int
    wait_for_peers: float
    max_lead: int
    method: str = "distill"
    outer_lr: float = 0.7  # diloco's outer SGD
    outer_momentum: float = 0.5
    asynchronous: bool = False  # localsgd, diloco: average with what peers published, no wait

    def validate(self, flag_prefix: str = "--codistill-") -> None:
        """Errors name the command-line flag (``--codistill-interval`` ...)."""

        def check(ok, flag, message):
            if not ok:
                raise ValueError(f"{flag_prefix}{flag} {message}")

        check(bool(self.root), "dir", "is required: the directory shared by all models")
        check(self.num_models >= 2, "num-models", f"must be >= 2 (got {self.num_models})")
        check(0 <= self.model_id < self.num_models, "id",
              f"must be in [0, --codistill-num-models) = [0, {self.num_models}) (got {self.model_id})")
        check(self.topology in TOPOLOGIES, "topology", f"must be one of {TOPOLOGIES} (got {self.topology!r})")
        check(self.interval > 0, "interval", f"must be > 0 (got {self.interval})")
        check(self.dtype in SNAPSHOT_DTYPES, "snapshot-dtype",
              f"must be one of {tuple(SNAPSHOT_DTYPES)} (got {self.dtype!r})")
        check(self.peer_dtype in PEER_DTYPES, "peer-dtype",
              f"must be one of {PEER_DTYPES} (got {self.peer_dtype!r})")
        check(self.max_staleness >= 0, "max-staleness", f"must be >= 0 (got {self.max_staleness})")
        check(self.wait_for_peers >= 0, "wait-for-peers", f"must be >= 0 (got {self.wait_for_peers})")
        check(self.max_lead >= 0, "max-lead", f"must be >= 0 (got {self.max_lead})")
        check(self.max_lead == 0 or self.wait_for_peers > 0, "max-lead",
              "needs --codistill-wait-for-peers > 0: the most seconds to wait for a peer")
        check(self.method in METHODS, "method", f"must be one of {METHODS} (got {self.method!r})")
        check(not self.asynchronous or self.method in AVERAGING_METHODS, "async",
              f"applies to --codistill-method localsgd or diloco only (got --codistill-method "
              f"{self.method}, which never waits for its peers anyway)")
        if self.method in AVERAGING_METHODS:
            check(self.wait_for_peers > 0 or self.asynchronous, "wait-for-peers",
                  f"must be > 0 with --codistill-method {self.method}: the most seconds each "
                  "averaging step waits for the other models' snapshots (e.g. 600), unless "
                  "--codistill-async, which never waits")
            check(self.topology == "all", "topology",
                  f"{self.topology} applies to --codistill-method distill only: "
                  f"{self.method} averages every model")
            check(self.max_lead == 0 and self.max_staleness == 0,
                  "max-lead" if self.max_lead else "max-staleness",
                  f"applies to --codistill-method distill only: {self.method} averages "
                  "every model at each averaging step")
        check(0 < self.outer_lr, "outer-lr", f"must be > 0 (got {self.outer_lr})")
        check(0 <= self.outer_momentum < 1, "outer-momentum",
              f"must be in [0, 1) (got {self.outer_momentum})")


def check_exchange_dir(root) -> None:
    """Fail at start-up when the exchange directory or store can never work; the error
    names --codistill-dir."""
    open_store(root).check()


@dataclass
class _Peer:
    model: Optional[torch.nn.Module] = None
    num_updates: int = -1  # of the snapshot in ``model``
    pending: Optional[concurrent.futures.Future] = None
    pending_updates: int = -1
    pending_key: str = ""
    rejected: set = field(default_factory=set)  # keys warned about once
    resumed_from: int = -1  # the version we used before a restart (our checkpoint's)


class Exchange:
    """What every policy shares: this model's store and lease, its snapshots published in
    the background (writer rank only), the store's outages, and closing.

    The writer rank holds this model's lease (``fairseq_codistill.exchange.lease``) from
    construction to ``close``; constructing fails, naming the flag, when another live
    job holds the same id or disagrees on the number of models, the topology or the method
    (or on the ``terms`` a policy adds to the lease: ``leases.acquire``'s keywords).
    """

    def __init__(self, cfg: ExchangeConfig, meta: Optional[dict] = None, group=None,
                 terms: Optional[dict] = None):
        cfg.validate()
        self.cfg = cfg
        self.store = open_store(cfg.root)
        self.meta = meta or {}
        self.group = group
        self.rank, self.world = _rank_world(group)
        self.is_writer = self.rank == 0
        self.peer_ids = peer_ids(cfg.model_id, cfg.num_models, cfg.topology)
        self.bytes_read = 0  # by this rank, from peers' snapshots
        self.num_loads = 0
        self.last_step = -1
        self.last_published = -1
        self._started = False
        self._outage = Outage()  # of self.store, as this exchange's lists, writes and reads see it
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="codistill-read")
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="codistill-write")
        self._write_future: Optional[concurrent.futures.Future] = None
        self.lease: Optional[leases.LeaseHolder] = None
        self._closed = False
        if self.is_writer:
            self.lease = leases.acquire(self.store, cfg.model_id, cfg.num_models, cfg.topology,
                                        method=cfg.method, **(terms or {}))
            self.store.clean(model_prefix(cfg.model_id))
        _OPEN.add(self)
        # Dropped without close() (fairseq's train() returns and its task is collected, so
        # _OPEN no longer holds it at exit): still finish the last write and mark the lease
        # finished, or a peer waiting at an averaging step would wait its full
        # --codistill-wait-for-peers for a model that ended normally.
        self._finalizer = weakref.finalize(self, _finish_dropped, self._writer, self.lease)

    def _begin(self, num_updates: int) -> bool:
        """Once per update (a repeated call with the same ``num_updates``, as under
        ``--update-freq``, is False); the first also tidies up after a resume."""
        if num_updates == self.last_step:
            return False
        self.last_step = num_updates
        if not self._started and self.is_writer:
            self._drop_future_snapshots(num_updates)
        return True

    def _drop_future_snapshots(self, num_updates: int) -> None:
        """A job resumed from a checkpoint at update U: its snapshots from U on belong to
        the lost run (the one at U was published after that checkpoint was saved) and,
        numbered higher, would outlive the new ones."""
        try:
            for info in list_snapshots(self.store, self.cfg.model_id):
                if info.num_updates >= num_updates > 0:
                    self.store.delete(info.key)
                    logger.info("codistill: removed %s, published after the checkpoint this "
                                "job resumed from", info.key)
        except Exception as e:  # storage trouble must not stop training
            logger.warning("codistill: could not tidy %s: %s", self.store.url, e)

    # -- publishing ------------------------------------------------------------------
    def publish(self, num_updates: int, state: Dict[str, torch.Tensor]) -> None:
        """Snapshot ``state`` (a model's state dict, or the weights to average) now; the
        file is written in the background (writer rank only)."""
        self.last_published = num_updates
        if self.is_writer:
            self._queue_write(num_updates, cast_state_dict(state, self.cfg.dtype))  # the weights *now*

    def _queue_write(self, num_updates: int, cast: Dict[str, torch.Tensor]) -> None:
        """Write ``cast`` (CPU copies in the snapshot dtype) in the background."""
        self.wait_for_write()  # one write at a time; back-pressure if storage is slow
        self._write_future = self._writer.submit(self._write, num_updates, cast)

    def _write(self, num_updates, state):
        try:
            write_snapshot(self.store, self.cfg.model_id, num_updates, state,
                           meta=self.meta, dtype=self.cfg.dtype, create_only=True)
        except FileExistsError:
            logger.error("codistill: %s already holds model %d's snapshot at update %d: "
                         "another job is publishing as --codistill-id %d", self.store.url,
                         self.cfg.model_id, num_updates, self.cfg.model_id)
        except Exception as e:
            # Storage trouble must not stop training: peers keep our previous snapshot,
            # and the next interval publishes again.
            logger.warning("codistill: could not publish snapshot at update %d to %s: %s",
                           num_updates, self.store.url, e)
            self._outage.failed()
        else:
            self._store_answers()
        if self.lease is not None:
            self.lease.renew(num_updates)  # the heartbeat of every exchange

    def wait_for_write(self) -> None:
        if self._write_future is not None:
            self._write_future.result()
            self._write_future = None

    def _store_answers(self) -> None:
        """A list or write succeeded: say so once if the last store access failed."""
        if self._outage.answered():
            logger.info("codistill: %s answers again", self.store.url)

    def _warn_missing_peers(self, num_updates: int, silent: List[int]) -> None:
        """At each exchange: a warning for every peer with no snapshot after
        ``SILENT_EXCHANGES`` exchanges; the other peers' leases are checked in the background."""
        if silent and num_updates >= SILENT_EXCHANGES * self.cfg.interval:
            logger.warning(
                "codistill: model(s) %s have not published a snapshot after %d exchanges "
                "(update %d): this model trains without them. Are they running, with "
                "--codistill-dir %s and --codistill-num-models %d?", silent,
                num_updates // self.cfg.interval, num_updates, self.store.url, self.cfg.num_models)
        self._reader.submit(self._check_leases, [j for j in self.peer_ids if j not in silent])

    def _check_leases(self, ids: List[int]) -> None:
        """Background thread: a warning for every peer whose lease went stale."""
        for j in ids:
            try:
                lease = leases.read_lease(self.store, j)
            except Exception:
                return  # the store is down: the listing has warned already
            if lease is not None and not lease.finished and not lease.live():
                logger.warning("codistill: model %d's lease is stale (renewed %.0fs ago by %s): "
                               "its job may be dead; %s", j, lease.age(), lease.who(),
                               self._without(j))

    def _without(self, peer_id: int) -> str:
        """What training does without peer ``peer_id``, for the stale-lease warning."""
        return "training goes on"

    def metrics(self) -> Dict[str, float]:
        """What the training log shows: ``codistill_bytes``, bytes read from peers so far."""
        return {"codistill_bytes": self.bytes_read}

    def state_dict(self) -> dict:
        return {"last_published": self.last_published, "bytes_read": self.bytes_read,
                "num_loads": self.num_loads}

    def load_state_dict(self, state: dict) -> None:
        self.last_published = int(state.get("last_published", -1))
        self.bytes_read = int(state.get("bytes_read", 0))
        self.num_loads = int(state.get("num_loads", 0))

    def close(self) -> None:
        """Finish the last write, mark the lease finished, and say so if this model never
        had a peer. Idempotent; also runs at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self._finalizer.detach()
        self.wait_for_write()
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True)
        if self.lease is not None:
            self.lease.release()
        if self.is_writer and self.last_step >= self.cfg.interval and self.num_loads == 0:
            logger.warning("codistill: model %d %s (%d updates; were the other models "
                           "running, with --codistill-dir %s?)", self.cfg.model_id,
                           self._never_had_a_peer(), self.last_step, self.store.url)

    def _never_had_a_peer(self) -> str:
        raise NotImplementedError


class PeerExchange(Exchange):
    """Publishes one model's snapshots and holds its peers' newest weights
    (``--codistill-method distill``).

    Call ``step(num_updates, model)`` once before every update (a repeated call with the
    same ``num_updates``, as under ``--update-freq``, does nothing new). Every
    ``interval`` updates it publishes ``model`` (writer rank only) and looks for newer
    peer snapshots, which a background thread reads and verifies; they are swapped in
    at the first later ``step`` where every rank has them, so the ranks of one
    data-parallel job always use the same peer version at the same update.

    ``build_peer(meta)`` makes an empty peer model from a snapshot's metadata and
    ``check_peer(meta)`` raises ``SnapshotError`` for an incompatible one (another
    vocabulary); both are the caller's, since only the caller knows its models.
    """

    def __init__(self, cfg: ExchangeConfig, build_peer: Callable[[dict], torch.nn.Module],
                 meta: Optional[dict] = None, check_peer: Optional[Callable[[dict], None]] = None,
                 group=None):
        super().__init__(cfg, meta, group)
        self.build_peer, self.check_peer = build_peer, check_peer
        self.peers: Dict[int, _Peer] = {j: _Peer() for j in self.peer_ids}
        self._waited = False
        self._given_up: Dict[int, int] = {}  # peer -> its newest update when we stopped waiting

    # -- the per-update hook ---------------------------------------------------------
    def step(self, num_updates: int, model: torch.nn.Module) -> None:
        if not self._begin(num_updates):
            return
        exchange_point = num_updates % self.cfg.interval == 0
        if exchange_point and num_updates > 0 and num_updates > self.last_published:
            self.publish(num_updates, model.state_dict())
        if exchange_point or not self._started:
            # Wait at the first look where peers can have published (update K of a fresh
            # run, the start of a resumed one) and, with max_lead, at every exchange.
            wait = 0.0
            if num_updates >= self.cfg.interval and (not self._waited or self.cfg.max_lead):
                wait, self._waited = self.cfg.wait_for_peers, True
            self._poll(num_updates, wait=wait)
            self._started = True
        if any(p.pending is not None for p in self.peers.values()):
            self._swap_ready(model)

    def active_peers(self, num_updates: Optional[int] = None) -> List[torch.nn.Module]:
        """Peer models to distil from now: loaded, and not staler than allowed. Run them
        under ``torch.inference_mode()``: that is what keeps them out of autograd."""
        num_updates = self.last_step if num_updates is None else num_updates
        out = []
        for p in self.peers.values():
            if p.model is None:
                continue
            if self.cfg.max_staleness and num_updates - p.num_updates > self.cfg.max_staleness:
                continue
            out.append(p.model)
        return out

    def staleness(self) -> Optional[float]:
        """Our update minus the peer snapshot's update, mean over loaded peers."""
        loaded = [self.last_step - p.num_updates for p in self.peers.values() if p.model is not None]
        return sum(loaded) / len(loaded) if loaded else None

    def metrics(self) -> Dict[str, float]:
        """Also ``peer_staleness``: our update minus the peer snapshot's, mean over peers."""
        staleness = self.staleness()
        return {**super().metrics(), **({} if staleness is None else {"peer_staleness": staleness})}

    # -- reading ---------------------------------------------------------------------
    def _poll(self, num_updates: int, wait: float = 0.0) -> None:
        """Choose (on rank 0) and start loading the newest snapshot of each peer."""
        choice = {}
        if self.rank == 0:
            start = time.monotonic()
            deadline, finished = start + wait, FinishedPeers(self.store)
            while True:
                choice = self._newest_unseen()
                lagging = self._lagging(num_updates, choice)
                if not [j for j in lagging if j not in finished.ids] or time.monotonic() >= deadline:
                    break
                if finished.look(lagging):
                    continue
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            if wait and lagging:
                logger.info("codistill: waited %.0fs at update %d for model(s) %s (%s); going "
                            "on without waiting for them until they publish again",
                            time.monotonic() - start, num_updates, lagging,
                            "their leases say they finished" if set(lagging) <= set(finished.ids)
                            else "no snapshot in time")
                for j in lagging:
                    self._given_up[j] = self._newest_known(j, choice)
            if num_updates % self.cfg.interval == 0:
                self._warn_missing_peers(
                    num_updates, [j for j in self.peers if self._newest_known(j, choice) < 0])
        choice = broadcast_from_rank0(choice, self.group, self.world)
        for j, (updates, key) in choice.items():
            peer = self.peers[int(j)]
            if peer.pending is not None:
                continue  # the previous load is still in flight; it will be swapped first
            peer.pending = self._reader.submit(self._load, int(j), key)
            peer.pending_updates, peer.pending_key = updates, key

    def _without(self, peer_id: int) -> str:
        return f"training goes on with its snapshot from update {self.peers[peer_id].num_updates}"

    def _newest_known(self, j: int, choice: dict) -> int:
        peer = self.peers[j]
        return max(choice[j][0] if j in choice else -1, peer.num_updates, peer.pending_updates)

    def _lagging(self, num_updates: int, choice: dict) -> List[int]:
        """Peers to wait for: with no snapshot at all or, with max_lead, too far behind."""
        out = []
        for j in self.peers:
            newest = self._newest_known(j, choice)
            if self._given_up.get(j) == newest:
                continue  # did not publish since we last gave up on it (dead or stuck)
            if newest < 0 or (self.cfg.max_lead and num_updates - newest > self.cfg.max_lead):
                out.append(j)
        return out

    def _newest_unseen(self) -> Dict[int, tuple]:
        """The newest snapshot of each peer newer than the one it has; {} if the store
        cannot be listed (the peers keep their weights)."""
        choice = {}
        try:
            for j, peer in self.peers.items():
                for info in list_snapshots(self.store, j):
                    if info.num_updates <= peer.num_updates:
                        break
                    if info.key in peer.rejected:
                        continue
                    choice[j] = (info.num_updates, info.key)
                    break
        except Exception as e:
            if self._outage.failed():
                logger.warning("codistill: cannot list %s (%s); keeping the peers' current "
                               "weights until it answers", self.store.url, e)
            return {}
        self._store_answers()
        return choice

    def _load(self, peer_id: int, key: str) -> Optional[Snapshot]:
        """Background thread: read, verify and check one snapshot; None if unusable."""
        try:
            snap = read_snapshot(self.store, key)
            if snap.model_id != peer_id:
                raise SnapshotError(f"{key} claims to be model {snap.model_id}, not {peer_id}")
            if self.check_peer is not None:
                self.check_peer(snap.meta)
            return snap
        except Exception as e:  # SnapshotError, or anything else: never out of this thread
            self._reject(peer_id, key, e)
            return None

    def _reject(self, peer_id: int, key: str, error: Exception) -> None:
        peer = self.peers[peer_id]
        if key in peer.rejected:
            return
        cause = error.__cause__
        if isinstance(cause, FileNotFoundError) or replaced_while_read(cause):
            # pruned (or replaced) before we read all of it
            logger.info("codistill: %s is gone; trying again at the next exchange", key)
            return
        if isinstance(error, SnapshotError) and not isinstance(error.__cause__, OSError):
            peer.rejected.add(key)  # a bad snapshot stays bad: warn once, never retry it
        else:  # a failed read (the store went down mid-read) is retried at the next exchange
            self._outage.failed()
        logger.warning("codistill: skipping peer snapshot: %s; keeping the previous weights "
                       "of model %d", error, peer_id)

    def _swap_ready(self, model: torch.nn.Module) -> None:
        ids = [j for j, p in self.peers.items() if p.pending is not None]
        # 1 = loaded, 0 = still loading, -1 = failed; every rank acts on the minimum.
        status = [(-1 if p.pending.result() is None else 1) if p.pending.done() else 0
                  for p in (self.peers[j] for j in ids)]
        status = all_ranks_min(status, self.group, self.world, next(model.parameters()).device)
        for j, s in zip(ids, status):
            peer = self.peers[j]
            if s == 0:
                continue
            future, peer.pending = peer.pending, None
            snap = future.result() if s == 1 else None
            if snap is None:
                continue
            try:
                self._install(peer, snap, model)
            except Exception as e:  # e.g. an architecture this install cannot build
                # A failed load_state_dict may have copied some tensors: drop the peer
                # rather than keep half of it; the next good snapshot rebuilds it.
                peer.model, peer.num_updates = None, -1
                self._reject(snap.model_id, peer.pending_key,
                             SnapshotError(f"cannot use {peer.pending_key}: {e}"))

    def _install(self, peer: _Peer, snap: Snapshot, model: torch.nn.Module) -> None:
        if peer.model is None:
            # Left with requires_grad=True: peers run under torch.inference_mode(), which
            # records no graph whatever the flag, while frozen weights take torch.matmul's
            # slow path. It folds a non-contiguous (B, T, C) input into one (B*T, C) mm
            # only for a weight that requires grad; otherwise it broadcasts the weight to
            # (B, C, V) for a bmm, and the CPU's bf16 bmm copies that broadcast: the weight
            # once per sentence. fairseq's transformer hands such transposed inputs to its
            # first attention projections and its output projection.
            # Building a model draws its initial weights: the training's random state (its
            # dropout, its batch order) must not depend on when a peer arrives.
            with torch.random.fork_rng(devices=[]):
                peer.model = self.build_peer(snap.meta)
        place_peer(peer.model, next(model.parameters()), self.cfg.peer_dtype)
        peer.model.load_state_dict(snap.state_dict, strict=True)  # copies, casting
        if 0 <= snap.num_updates < peer.resumed_from:
            logger.info("codistill: model %d is back at its update %d, from %d before this job "
                        "resumed: it resumed from an older checkpoint", snap.model_id,
                        snap.num_updates, peer.resumed_from)
        peer.num_updates, peer.resumed_from = snap.num_updates, -1
        self.bytes_read += snap.nbytes
        self.num_loads += 1
        # every rank says which version it swapped in at which update: all must agree
        logger.info("codistill: loaded model %d at its update %d (%.1f MB), in use from update %d%s",
                    snap.model_id, snap.num_updates, snap.nbytes / 1e6, self.last_step,
                    f" on rank {self.rank}" if self.world > 1 else "")

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "peer_versions": {str(j): p.num_updates for j, p in self.peers.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Counters resume; peer weights are re-read from the newest snapshots, and a
        peer found at an older version than before says that it went back."""
        super().load_state_dict(state)
        for j, version in (state.get("peer_versions") or {}).items():
            if int(j) in self.peers:
                self.peers[int(j)].resumed_from = int(version)

    def peer_versions(self) -> Dict[int, int]:
        """Each peer's version in use, or before a restart the one it had."""
        return {j: p.num_updates if p.model is not None else p.resumed_from
                for j, p in self.peers.items()}

    def _never_had_a_peer(self) -> str:
        return ("trained without any peer: no peer snapshot was loaded, so its penalty was 0 "
                "throughout")


def place_peer(peer: torch.nn.Module, like: torch.Tensor, dtype: str) -> torch.nn.Module:
    """``peer`` in eval mode on the device of ``like`` (a weight of the model that
    trains), in the dtype --codistill-peer-dtype ``dtype`` gives next to it. Floating
    inputs are cast to that dtype as the peer is called, so the batch the model trains on
    (fp32 images, features) runs a bf16 peer as it is."""
    peer = peer.to(device=like.device, dtype=peer_dtype(dtype, like.dtype, like.device)).eval()
    if not getattr(peer, "_codistill_casts_inputs", False):
        peer.register_forward_pre_hook(_inputs_in_peer_dtype, with_kwargs=True)
        peer._codistill_casts_inputs = True
    return peer


def _inputs_in_peer_dtype(module: torch.nn.Module, args: tuple, kwargs: dict):
    dtype = next(module.parameters()).dtype

    def cast(value):
        if torch.is_tensor(value) and value.is_floating_point() and value.dtype != dtype:
            return value.to(dtype)
        return value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _rank_world(group):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(group), torch.distributed.get_world_size(group)
    return 0, 1


def broadcast_from_rank0(obj, group, world):
    if world == 1:
        return obj
    box = [obj]
    src = torch.distributed.get_global_rank(group, 0) if group is not None else 0
    torch.distributed.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_ranks_min(values: Sequence[int], group, world, device: torch.device) -> List[int]:
    """The elementwise minimum over the ranks of ``group``; ``device``: where the model is."""
    if world == 1:
        return list(values)
    if torch.distributed.get_backend(group) == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor(list(values), dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN, group=group)
    return t.tolist()
