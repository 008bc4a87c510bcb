"""Membership: each model keeps a lease in the store, so mistakes show at start-up.

``model{i}/lease.json`` says who trains as model i: host, pid, SLURM job, start time,
``--codistill-num-models``, ``--codistill-topology``, ``--codistill-method`` and, for the
methods that average weights, ``--codistill-interval``, ``--codistill-async`` and the names
and shapes of the weights averaged (their fingerprint), and a
heartbeat that the owner renews every ``HEARTBEAT`` seconds and at every exchange. A lease is live while its
heartbeat is younger than its ``ttl``; a job that crashed stops renewing it, so its
lease lapses and a restart is not blocked (at once on the same host, where the dead
pid shows, or in the same SLURM job, as after a requeue; after ``ttl`` elsewhere). A job
that ends normally marks its lease finished: a restart may take it at once and peers do
not warn about it.

At start-up (``acquire``) a job fails, naming the flag, when
- a live lease holds its ``--codistill-id`` (two jobs started as the same model would
  overwrite each other's snapshots and both train without a peer), or
- a live model disagrees on ``--codistill-num-models``, ``--codistill-topology`` or
  ``--codistill-method`` (a model that averages weights beside one that distils would
  wait for snapshots the other never averages), or, averaging, on ``--codistill-interval``
  or ``--codistill-async`` (each would wait for snapshots of updates the other never
  publishes) or on the weights' names and shapes (an architecture of its own: the mean of
  two architectures is no model).

A job refused for disagreeing leaves its lease behind, marked finished (it blocks no
restart), so that a model already running, which compares the leases written since its
start before its first update (``check_peers``), refuses to train too. A lease written
before a field existed has it as None: not compared.

Clocks: liveness compares the reader's clock with the owner's heartbeat, so hosts'
clocks must agree to well within ``ttl`` (NTP keeps them within a second).
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Tuple

from fairseq_codistill.exchange.storage import Outage, Store, model_prefix, replaced_while_read

logger = logging.getLogger(__name__)

HEARTBEAT = 30.0  # seconds between renewals
TTL = 120.0  # a lease not renewed for this long is stale: four missed heartbeats
READ_ATTEMPTS = 3  # reads of a lease that was replaced, or torn, while being read
POLL_SECONDS = 1.0  # between readings of awaited peers' leases while waiting for their snapshots
# A store that fails this many times while a job takes its lease stops the job, with a
# pause of START_RETRY_SECONDS x the attempt between tries (botocore retries each request
# itself first).
START_ATTEMPTS = 3
START_RETRY_SECONDS = 2.0
_MODEL_DIR = re.compile(r"^model(\d+)$")


def lease_key(model_id: int) -> str:
    return f"{model_prefix(model_id)}/lease.json"


@dataclass(frozen=True)
class Lease:
    model_id: int
    host: str
    pid: int
    job: str  # the scheduler's job id (SLURM_JOB_ID), or ""
    token: str  # unique per job start: tells our lease from a usurper's
    started: float
    heartbeat: float
    num_models: int
    topology: str
    num_updates: int = 0
    ttl: float = TTL
    finished: bool = False
    method: str = "distill"  # a lease written before the methods came is a distilling one
    # Averaging only (None: a distilling model, or a lease from before these were kept):
    interval: Optional[int] = None
    asynchronous: Optional[bool] = None
    shapes: Optional[Dict[str, List[int]]] = None  # the weights averaged: name -> shape

    def age(self, now: Optional[float] = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat

    def live(self, now: Optional[float] = None) -> bool:
        """Held by a job that is running, as far as the store can tell."""
        if self.finished or self.age(now) > self.ttl:
            return False
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return False  # crashed on this host: no need to wait for the ttl
        return True

    def who(self) -> str:
        job = f", job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host}{job}"


# What every model of one run agrees on: a lease's field and the flag that sets it.
AGREED: Tuple[Tuple[str, str], ...] = (
    ("num_models", "--codistill-num-models"), ("topology", "--codistill-topology"),
    ("method", "--codistill-method"), ("interval", "--codistill-interval"),
    ("asynchronous", "--codistill-async"))


def _setting(flag: str, value) -> str:
    return f"{flag} {('on' if value else 'off') if isinstance(value, bool) else value}"


def check_agrees(ours: Lease, other: Lease, url: str) -> None:
    """``ValueError`` naming the flag where ``other`` trains with another setting than
    ``ours``; a field either lease lacks (None) is not compared."""
    where = f"model {other.model_id} ({other.who()})"
    for name, flag in AGREED:
        mine, theirs = getattr(ours, name), getattr(other, name)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(
                f"{_setting(flag, mine)} disagrees with {where}, which trains with "
                f"{_setting(flag, theirs)} in --codistill-dir {url}: every model of one "
                "codistillation must use the same value")
    if ours.shapes is None or other.shapes is None or ours.shapes == other.shapes:
        return
    name = min(set(ours.shapes) ^ set(other.shapes) or
               {n for n in ours.shapes if ours.shapes[n] != other.shapes[n]})

    def shape(shapes):
        return f"of shape {tuple(shapes[name])}" if name in shapes else "absent"

    raise ValueError(
        f"--codistill-method {ours.method}: {where} averages weights of another architecture "
        f"in --codistill-dir {url}: its {name} is {shape(other.shapes)} where this model's is "
        f"{shape(ours.shapes)}. localsgd and diloco need every model of one architecture; "
        "--codistill-method distill codistills models that differ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def read_lease(store: Store, model_id: int) -> Optional[Lease]:
    """Model ``model_id``'s lease; None if it has none or it stays unreadable. A lease
    replaced while it was read, or torn (a store whose writes are not atomic), is read
    again; a store that fails raises."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            data = store.read_bytes(lease_key(model_id))
        except FileNotFoundError:
            return None
        except OSError as e:
            if replaced_while_read(e) and attempt < READ_ATTEMPTS:
                continue
            raise
        try:
            return Lease(**json.loads(data))
        except (ValueError, TypeError) as e:  # torn by a foreign writer, or another version
            error = e
    logger.warning("codistill: ignoring the unreadable lease of model %d: %s", model_id, error)
    return None


def read_leases(store: Store) -> Dict[int, Lease]:
    """Every model's lease in the store."""
    out = {}
    for name in store.list(""):
        m = _MODEL_DIR.match(name.rstrip("/"))
        if m:
            lease = read_lease(store, int(m.group(1)))
            if lease is not None:
                out[lease.model_id] = lease
    return out


def _write(store: Store, lease: Lease, create_only: bool = False) -> None:
    store.write_bytes(lease_key(lease.model_id), json.dumps(asdict(lease)).encode(),
                      create_only=create_only)


class LeaseHolder:
    """This job's lease: taken by ``acquire``, renewed by a daemon thread and by
    ``renew`` at each exchange, marked finished by ``release``."""

    def __init__(self, store: Store, lease: Lease, heartbeat: float = HEARTBEAT):
        self.store, self.lease = store, lease
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._outage = Outage()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat,),
                                        name="codistill-lease", daemon=True)
        self._thread.start()

    def renew(self, num_updates: Optional[int] = None, finished: bool = False) -> None:
        """Write a fresh heartbeat; a store that is down costs one warning per outage."""
        with self._lock:
            changes = {"heartbeat": time.time(), "finished": finished}
            if num_updates is not None:
                changes["num_updates"] = num_updates
            self.lease = replace(self.lease, **changes)
            try:
                current = read_lease(self.store, self.lease.model_id)
                if current is not None and current.token != self.lease.token and current.live():
                    logger.error("codistill: model %d's lease was taken by %s: two jobs are "
                                 "training as --codistill-id %d", self.lease.model_id,
                                 current.who(), self.lease.model_id)
                _write(self.store, self.lease)
                if self._outage.answered():
                    logger.info("codistill: lease renewed again in %s", self.store.url)
            except Exception as e:  # storage trouble must not stop training
                if self._outage.failed():
                    logger.warning("codistill: could not renew the lease in %s: %s",
                                   self.store.url, e)

    def _beat(self, period: float) -> None:
        while not self._stop.wait(period):
            self.renew()

    def release(self) -> None:
        """Stop renewing; mark the lease finished (a normal end)."""
        self._stop.set()
        self.renew(finished=True)


def acquire(store: Store, model_id: int, num_models: int, topology: str,
            heartbeat: float = HEARTBEAT, ttl: float = TTL, method: str = "distill",
            interval: Optional[int] = None, asynchronous: Optional[bool] = None,
            shapes: Optional[Dict[str, List[int]]] = None) -> LeaseHolder:
    """Check membership against the live leases in ``store`` and take model
    ``model_id``'s lease; ``ValueError`` naming the flag on a conflict, or naming
    --codistill-dir when the store keeps failing. ``interval``, ``asynchronous`` and
    ``shapes`` (name -> shape of the weights averaged): those of a model that averages
    weights, None for one that distils (not compared)."""
    token = uuid.uuid4().hex  # one for every attempt: a lease an attempt wrote is ours
    terms = dict(num_models=num_models, topology=topology, method=method, interval=interval,
                 asynchronous=asynchronous, shapes=shapes)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _acquire(store, model_id, terms, heartbeat, ttl, token)
        except ValueError:
            raise  # a conflict, named by its flag
        except Exception as e:  # the store failed: it may answer a moment later
            if attempt == START_ATTEMPTS:
                raise ValueError(
                    f"--codistill-dir {store.url}: could not take model {model_id}'s lease: "
                    f"the store failed {START_ATTEMPTS} times in a row (last: "
                    f"{type(e).__name__}: {e})") from e
            logger.warning("codistill: taking model %d's lease in %s failed (%s: %s); trying "
                           "again", model_id, store.url, type(e).__name__, e)
            time.sleep(START_RETRY_SECONDS * attempt)
    raise AssertionError("unreachable")


def _acquire(store: Store, model_id: int, terms: dict, heartbeat: float, ttl: float, token: str,
             retry: bool = True) -> LeaseHolder:
    now, job = time.time(), os.environ.get("SLURM_JOB_ID", "")
    leases = read_leases(store)
    own = leases.pop(model_id, None)
    ours = own is not None and own.token == token  # an earlier attempt wrote it, then failed
    requeued = own is not None and bool(job) and own.job == job  # the same SLURM job, again
    if own is not None and own.live(now) and not (requeued or ours):
        raise ValueError(
            f"--codistill-id {model_id}: model {model_id} is already training with "
            f"--codistill-dir {store.url}: its lease was renewed {own.age(now):.0f}s ago by "
            f"{own.who()}. Give this job another --codistill-id; if that job is dead, its "
            f"lease lapses {max(own.ttl - own.age(now), 0):.0f}s from now (or delete "
            f"{store.url}/{lease_key(model_id)})")
    num_models = terms["num_models"]
    lease = Lease(model_id=model_id, host=socket.gethostname(), pid=os.getpid(), job=job,
                  token=token, started=now, heartbeat=now, ttl=ttl, **terms)
    for j, other in sorted(leases.items()):
        if not other.live(now):
            continue
        try:
            check_agrees(lease, other, store.url)
        except ValueError:
            _leave_refused(store, lease, create_only=own is None)
            raise
        if j >= num_models:
            raise ValueError(
                f"--codistill-num-models {num_models}: model {j} ({other.who()}) is training "
                f"in --codistill-dir {store.url}, so there are more than {num_models} models")
    try:
        # Create-only when there is no lease: of two jobs started at once, one fails here.
        _write(store, lease, create_only=own is None)
    except FileExistsError:
        if not retry:  # there, but unreadable twice: not ours to overwrite
            raise ValueError(f"--codistill-id {model_id}: {store.url}/{lease_key(model_id)} "
                             "exists but cannot be read; delete it if no job trains as model "
                             f"{model_id}") from None
        return _acquire(store, model_id, terms, heartbeat, ttl, token, retry=False)
    if own is not None and not ours:
        logger.info("codistill: took over model %d's lease from %s (%s)", model_id, own.who(),
                    "finished" if own.finished else f"stale for {own.age(now):.0f}s")
    return LeaseHolder(store, lease, heartbeat)


def _leave_refused(store: Store, lease: Lease, create_only: bool) -> None:
    """Leave the lease of a job refused for disagreeing, marked finished: a model already
    waiting at start-up (``check_peers``) sees the disagreement and refuses too."""
    try:
        _write(store, replace(lease, finished=True), create_only=create_only)
    except Exception as e:  # the refusal itself is what matters
        logger.warning("codistill: could not leave model %d's refused lease in %s: %s",
                       lease.model_id, store.url, e)


def check_peers(store: Store, ours: Lease, peer_ids: List[int], seconds: float,
                poll: float = 0.2) -> List[int]:
    """Before the first update: wait up to ``seconds`` for a lease of every peer written
    since ``ours`` started (or still live), and check each against ``ours``:
    ``ValueError`` naming the flag on a disagreement, as ``acquire`` raises for the model
    that starts second. Returns the peers with no such lease by then (not started yet: if
    they disagree, ``acquire`` refuses them); a peer whose job ended before this one
    started is not waited for. A store that fails counts as no lease."""
    deadline = time.monotonic() + seconds
    checked = set()
    while True:
        for j in (j for j in peer_ids if j not in checked):
            try:
                other = read_lease(store, j)
            except Exception as e:
                logger.warning("codistill: cannot read model %d's lease in %s: %s", j, store.url, e)
                other = None
            if other is not None and (other.live() or other.heartbeat >= ours.started):
                check_agrees(ours, other, store.url)
                checked.add(j)
            elif other is not None:
                # it ended (finished, or died without marking its lease) before this job
                # started: nothing to wait for
                checked.add(j)
        missing = [j for j in peer_ids if j not in checked]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
