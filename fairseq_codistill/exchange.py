"""The peer-snapshot exchange: how n codistilling models share weights through files.

No fairseq import: the NMT task and the vision trainer both drive a ``PeerExchange``.

Layout of the exchange directory (a shared filesystem in a cluster)::

    DIR/model{i}/snapshot-{update:010d}.cds   one complete snapshot of model i
    DIR/model{i}/.tmp-*                        a snapshot being written (never read)

A snapshot file is ``payload | header | u32 header length | u32 header CRC | MAGIC``: the payload is
``torch.save(state_dict)`` (tensors only, so ``torch.load(weights_only=True)`` reads it),
the header is JSON with the format version, model id, update number, dtype, payload
length, CRC-32 of the payload and the metadata needed to rebuild the model; the
trailer holds the header's own CRC-32, so a damaged byte anywhere is caught. The
header sits at the end so the writer streams the payload and its CRC in one pass.

Files appear by ``rename`` after ``fsync``: a reader sees a whole file or none.
Writers keep their newest ``KEEP`` versions; a reader picks the newest and, since a
version is pruned only after ``KEEP`` newer ones exist, has ``KEEP - 1`` intervals to
read it. A file unlinked while open stays readable (POSIX), and one that vanished
before it was opened is simply retried at the next interval.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from fairseq_codistill.precision import PEER_DTYPES, peer_dtype

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"CODISTL\x01"
KEEP = 2
TOPOLOGIES = ("all", "ring")
SNAPSHOT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_TRAILER = struct.Struct("<II8s")  # header length, header CRC-32, MAGIC
_NAME = re.compile(r"^snapshot-(\d{10})\.cds$")
# A header is a few KB; anything claiming more is garbage, not a snapshot.
_MAX_HEADER_BYTES = 1 << 20


class SnapshotError(Exception):
    """A snapshot file that cannot be used: torn, corrupt, foreign or from the future."""


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot file found by listing, before it is read."""

    model_id: int
    num_updates: int
    path: Path


@dataclass
class Snapshot:
    """A snapshot read and verified in full."""

    model_id: int
    num_updates: int
    dtype: str
    meta: dict
    state_dict: Dict[str, torch.Tensor]
    nbytes: int


def model_dir(root, model_id: int) -> Path:
    return Path(root) / f"model{model_id}"


def peer_ids(model_id: int, num_models: int, topology: str = "all") -> List[int]:
    """The models that ``model_id`` codistills with: every other one, or its ring successor."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES} (got {topology!r})")
    if topology == "ring":
        return [(model_id + 1) % num_models]
    return [j for j in range(num_models) if j != model_id]


class _CRCWriter(io.RawIOBase):
    """A write-only file wrapper that keeps the CRC-32 and length of what went through.

    ``on_first_write`` runs before the first byte goes through: by then torch.save has
    opened its zip writer (see ``_save_without_zip_crc``).
    """

    CHUNK = 1 << 20  # torch.save hands over whole tensors; one huge write() can stall a disk

    def __init__(self, f, on_first_write: Optional[Callable[[], None]] = None):
        self.f, self.crc, self.nbytes = f, 0, 0
        self.on_first_write = on_first_write

    def writable(self):
        return True

    def write(self, b):
        if self.on_first_write is not None:
            self.on_first_write, first = None, self.on_first_write
            first()
        view = memoryview(b).cast("B")
        for start in range(0, len(view), self.CHUNK):
            piece = view[start:start + self.CHUNK]
            self.crc = zlib.crc32(piece, self.crc)
            self.f.write(piece)
        self.nbytes += len(view)
        return len(view)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write: Callable) -> None:
    """Write ``path`` through ``write(f)`` into a temp file, fsync it, then rename it in.

    Readers in other processes see the old file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def cast_state_dict(state_dict: Dict[str, torch.Tensor], dtype: str) -> Dict[str, torch.Tensor]:
    """CPU copies of the tensors, floating-point ones cast to the snapshot dtype.

    Always copies (``.to`` of a CPU fp32 tensor to fp32 would return the live parameter,
    which the background writer would then save while the optimizer changes it), and
    copies tied weights once: they stay one tensor, so torch.save stores them once.
    """
    target = SNAPSHOT_DTYPES[dtype]
    out, copies = {}, {}
    for name, t in state_dict.items():
        t = t.detach()
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key not in copies:
            copies[key] = t.to(device="cpu", dtype=target if t.is_floating_point() else t.dtype,
                               copy=True).contiguous()
        out[name] = copies[key]
    return out


_ZIP_CRC_LOCK = threading.Lock()


def _save_without_zip_crc(state_dict, f) -> _CRCWriter:
    """``torch.save(state_dict)`` into ``f`` through a ``_CRCWriter``, without torch's zip CRCs.

    torch.save computes a CRC-32 of every zip record, a second pass over hundreds of MB
    (0.04 s per 80 MB on the development machine, 40% of writing them to disk) that
    nothing reads back: torch.load does not verify it (a flipped byte loads silently with or
    without it). Our CRC-32 covers the same bytes and is checked. The switch is
    process-wide, but torch reads it once, when a save opens its zip writer, so it is off
    only from here to our first byte: a save started by another thread in that window
    would still load, just without zip CRCs.
    """
    if not hasattr(torch.serialization, "set_crc32_options"):  # an older torch: no switch
        crc_f = _CRCWriter(f)
        torch.save(state_dict, crc_f)
        return crc_f
    with _ZIP_CRC_LOCK:
        previous = torch.serialization.get_crc32_options()

        def restore():
            torch.serialization.set_crc32_options(previous)

        crc_f = _CRCWriter(f, on_first_write=restore)
        torch.serialization.set_crc32_options(False)
        try:
            torch.save(state_dict, crc_f)
        finally:
            if crc_f.on_first_write is not None:  # failed before writing anything
                restore()
    return crc_f


def write_snapshot(root, model_id: int, num_updates: int, state_dict: Dict[str, torch.Tensor],
                   meta: Optional[dict] = None, dtype: str = "fp16", keep: int = KEEP) -> Path:
    """Publish ``state_dict`` (already on the CPU in ``dtype``, see ``cast_state_dict``)."""
    if dtype not in SNAPSHOT_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(SNAPSHOT_DTYPES)} (got {dtype!r})")
    directory = model_dir(root, model_id)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"snapshot-{num_updates:010d}.cds"

    def write(f):
        crc_f = _save_without_zip_crc(state_dict, f)
        header = json.dumps({
            "format_version": FORMAT_VERSION,
            "model_id": model_id,
            "num_updates": num_updates,
            "dtype": dtype,
            "payload_bytes": crc_f.nbytes,
            "crc32": crc_f.crc,
            "created": time.time(),
            "meta": meta or {},
        }, default=str).encode()
        f.write(header)
        f.write(_TRAILER.pack(len(header), zlib.crc32(header), MAGIC))

    atomic_write(path, write)
    prune(root, model_id, keep)
    return path


def prune(root, model_id: int, keep: int = KEEP) -> None:
    """Delete all but the newest ``keep`` snapshots of ``model_id``."""
    for info in list_snapshots(root, model_id)[keep:]:
        try:
            info.path.unlink()
        except FileNotFoundError:
            pass


def list_snapshots(root, model_id: int) -> List[SnapshotInfo]:
    """Complete snapshots of ``model_id``, newest first. Temp files never match."""
    directory = model_dir(root, model_id)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        m = _NAME.match(name)
        if m:
            found.append(SnapshotInfo(model_id, int(m.group(1)), directory / name))
    return sorted(found, key=lambda s: s.num_updates, reverse=True)


def read_snapshot(path) -> Snapshot:
    """Read and verify a whole snapshot; any defect raises ``SnapshotError``, nothing partial."""
    try:
        with open(path, "rb") as f:
            return _read(f, path)
    except OSError as e:
        raise SnapshotError(f"cannot read {path}: {e}") from e


def parse_snapshot(data: bytes, path="<bytes>") -> Snapshot:
    """``read_snapshot`` of bytes in memory."""
    return _read(io.BytesIO(data), path)


def _read(f, path) -> Snapshot:
    size = f.seek(0, io.SEEK_END)
    if size < _TRAILER.size:
        raise SnapshotError(f"{path} is not a complete snapshot (no end marker)")
    f.seek(size - _TRAILER.size)
    header_len, header_crc, magic = _TRAILER.unpack(f.read(_TRAILER.size))
    if magic != MAGIC:
        raise SnapshotError(f"{path} is not a complete snapshot (no end marker)")
    header_end = size - _TRAILER.size
    if header_len > min(_MAX_HEADER_BYTES, header_end):
        raise SnapshotError(f"{path} has a bad header length ({header_len})")
    f.seek(header_end - header_len)
    header_bytes = f.read(header_len)
    if zlib.crc32(header_bytes) != header_crc:
        raise SnapshotError(f"{path} fails its header checksum")
    try:
        header = json.loads(header_bytes)
        version = header["format_version"]
        payload_bytes, crc = int(header["payload_bytes"]), int(header["crc32"])
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{path} has an unreadable header: {e}") from e
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"{path} has snapshot format {version}; this fairseq-codistill reads format "
            f"{FORMAT_VERSION}: run the same version in every model")
    if payload_bytes != header_end - header_len:
        raise SnapshotError(f"{path} is truncated or padded (payload length mismatch)")
    f.seek(0)
    payload = f.read(payload_bytes)  # a bytes object: BytesIO below shares it, no copy
    if zlib.crc32(payload) != crc:
        raise SnapshotError(f"{path} fails its checksum")
    try:
        state_dict = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # a valid CRC over an invalid pickle: foreign writer
        raise SnapshotError(f"{path} does not hold a state dict: {e}") from e
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise SnapshotError(f"{path} does not hold a state dict of tensors")
    try:
        return Snapshot(
            model_id=int(header["model_id"]), num_updates=int(header["num_updates"]),
            dtype=str(header["dtype"]), meta=dict(header.get("meta") or {}),
            state_dict=state_dict, nbytes=size,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"{path} has an incomplete header: {e}") from e


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


def check_exchange_dir(root) -> None:
    """Fail at start-up when the exchange directory can never work."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--codistill-dir {root} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--codistill-dir {root}: cannot create it ({e.strerror})") from e
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"--codistill-dir {root} is not writable ({e.strerror})") from e


@dataclass
class _Peer:
    model: Optional[torch.nn.Module] = None
    num_updates: int = -1  # of the snapshot in ``model``
    pending: Optional[concurrent.futures.Future] = None
    pending_updates: int = -1
    pending_path: str = ""
    rejected: set = field(default_factory=set)  # paths warned about once


class PeerExchange:
    """Publishes one model's snapshots and holds its peers' newest weights.

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
        cfg.validate()
        self.cfg = cfg
        self.build_peer, self.check_peer = build_peer, check_peer
        self.meta = meta or {}
        self.group = group
        self.rank, self.world = _rank_world(group)
        self.is_writer = self.rank == 0
        self.peers: Dict[int, _Peer] = {j: _Peer() for j in peer_ids(cfg.model_id, cfg.num_models, cfg.topology)}
        self.bytes_read = 0  # by this rank, from peers' files
        self.bytes_written = 0
        self.num_loads = 0
        self.last_step = -1
        self.last_published = -1
        self._started = False
        self._waited = False
        self._given_up: Dict[int, int] = {}  # peer -> its newest update when we stopped waiting
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="codistill-read")
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="codistill-write")
        self._write_future: Optional[concurrent.futures.Future] = None
        model_dir(cfg.root, cfg.model_id).mkdir(parents=True, exist_ok=True)
        if self.is_writer:
            self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        """A job killed while publishing leaves a (model-sized) temp file; only this model
        writes into its directory, and it is not writing yet, so every temp file is stale."""
        directory = model_dir(self.cfg.root, self.cfg.model_id)
        for name in os.listdir(directory):
            if name.startswith(".tmp-"):
                try:
                    os.unlink(directory / name)
                    logger.info("codistill: removed %s, left by an interrupted publish", name)
                except FileNotFoundError:
                    pass

    # -- the per-update hook ---------------------------------------------------------
    def step(self, num_updates: int, model: torch.nn.Module) -> None:
        if num_updates == self.last_step:
            return
        self.last_step = num_updates
        exchange_point = num_updates % self.cfg.interval == 0
        if exchange_point and num_updates > 0 and num_updates > self.last_published:
            self.publish(num_updates, model)
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

    # -- publishing ------------------------------------------------------------------
    def publish(self, num_updates: int, model: torch.nn.Module) -> None:
        """Snapshot ``model`` now; the file is written in the background (writer rank only)."""
        self.last_published = num_updates
        if not self.is_writer:
            return
        self.wait_for_write()  # one write at a time; back-pressure if storage is slow
        state = cast_state_dict(model.state_dict(), self.cfg.dtype)  # the weights *now*
        self._write_future = self._writer.submit(self._write, num_updates, state)

    def _write(self, num_updates, state):
        try:
            path = write_snapshot(self.cfg.root, self.cfg.model_id, num_updates, state,
                                  meta=self.meta, dtype=self.cfg.dtype)
            self.bytes_written += path.stat().st_size
        except OSError as e:
            # Storage trouble must not stop training: peers keep our previous snapshot.
            logger.warning("codistill: could not publish snapshot at update %d: %s", num_updates, e)

    def wait_for_write(self) -> None:
        if self._write_future is not None:
            self._write_future.result()
            self._write_future = None

    # -- reading ---------------------------------------------------------------------
    def _poll(self, num_updates: int, wait: float = 0.0) -> None:
        """Choose (on rank 0) and start loading the newest snapshot of each peer."""
        choice = {}
        if self.rank == 0:
            deadline = time.monotonic() + wait
            while True:
                choice = self._newest_unseen()
                lagging = self._lagging(num_updates, choice)
                if not lagging or time.monotonic() >= deadline:
                    break
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            if wait and lagging:
                logger.info("codistill: waited %.0fs at update %d for model(s) %s; going on "
                            "without waiting for them until they publish again",
                            wait, num_updates, lagging)
                for j in lagging:
                    self._given_up[j] = self._newest_known(j, choice)
        choice = _broadcast(choice, self.group, self.world)
        for j, (updates, path) in choice.items():
            peer = self.peers[int(j)]
            if peer.pending is not None:
                continue  # the previous load is still in flight; it will be swapped first
            peer.pending = self._reader.submit(self._load, int(j), path)
            peer.pending_updates, peer.pending_path = updates, path

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
        choice = {}
        for j, peer in self.peers.items():
            for info in list_snapshots(self.cfg.root, j):
                if info.num_updates <= peer.num_updates:
                    break
                if str(info.path) in peer.rejected:
                    continue
                choice[j] = (info.num_updates, str(info.path))
                break
        return choice

    def _load(self, peer_id: int, path: str) -> Optional[Snapshot]:
        """Background thread: read, verify and check one snapshot; None if unusable."""
        try:
            snap = read_snapshot(path)
            if snap.model_id != peer_id:
                raise SnapshotError(f"{path} claims to be model {snap.model_id}, not {peer_id}")
            if self.check_peer is not None:
                self.check_peer(snap.meta)
            return snap
        except Exception as e:  # SnapshotError, or anything else: never out of this thread
            self._reject(peer_id, path, e)
            return None

    def _reject(self, peer_id: int, path: str, error: Exception) -> None:
        peer = self.peers[peer_id]
        if path not in peer.rejected:
            peer.rejected.add(path)
            missing_file = isinstance(error.__cause__, FileNotFoundError)
            (logger.info if missing_file else logger.warning)(
                "codistill: skipping peer snapshot: %s; keeping the previous weights of model %d",
                error, peer_id)

    def _swap_ready(self, model: torch.nn.Module) -> None:
        ids = [j for j, p in self.peers.items() if p.pending is not None]
        # 1 = loaded, 0 = still loading, -1 = failed; every rank acts on the minimum.
        status = [(-1 if p.pending.result() is None else 1) if p.pending.done() else 0
                  for p in (self.peers[j] for j in ids)]
        status = _all_min(status, self.group, self.world, model)
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
                self._reject(snap.model_id, peer.pending_path,
                             SnapshotError(f"cannot use {peer.pending_path}: {e}"))

    def _install(self, peer: _Peer, snap: Snapshot, model: torch.nn.Module) -> None:
        if peer.model is None:
            # Left with requires_grad=True: peers run under torch.inference_mode(), which
            # records no graph whatever the flag, while frozen weights take torch.matmul's
            # slow path. It folds a non-contiguous (B, T, C) input into one (B*T, C) mm
            # only for a weight that requires grad; otherwise it broadcasts the weight to
            # (B, C, V) for a bmm, and the CPU's bf16 bmm copies that broadcast: the weight
            # once per sentence. fairseq's transformer hands such transposed inputs to its
            # first attention projections and its output projection.
            peer.model = self.build_peer(snap.meta)
        place_peer(peer.model, next(model.parameters()), self.cfg.peer_dtype)
        peer.model.load_state_dict(snap.state_dict, strict=True)  # copies, casting
        peer.num_updates = snap.num_updates
        self.bytes_read += snap.nbytes
        self.num_loads += 1
        logger.info("codistill: loaded model %d at its update %d (%.1f MB)",
                    snap.model_id, snap.num_updates, snap.nbytes / 1e6)

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "peer_versions": {str(j): p.num_updates for j, p in self.peers.items()},
            "last_published": self.last_published,
            "bytes_read": self.bytes_read,
            "num_loads": self.num_loads,
        }

    def load_state_dict(self, state: dict) -> None:
        """Counters resume; peer weights are re-read from the newest snapshots."""
        self.last_published = int(state.get("last_published", -1))
        self.bytes_read = int(state.get("bytes_read", 0))
        self.num_loads = int(state.get("num_loads", 0))

    def close(self) -> None:
        self.wait_for_write()
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True)


def place_peer(peer: torch.nn.Module, like: torch.Tensor, dtype: str) -> torch.nn.Module:
    """``peer`` in eval mode on the device of ``like`` (a weight of the model that
    trains), in the dtype --codistill-peer-dtype ``dtype`` gives next to it."""
    return peer.to(device=like.device, dtype=peer_dtype(dtype, like.dtype, like.device)).eval()


def _rank_world(group):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(group), torch.distributed.get_world_size(group)
    return 0, 1


def _broadcast(obj, group, world):
    if world == 1:
        return obj
    box = [obj]
    src = torch.distributed.get_global_rank(group, 0) if group is not None else 0
    torch.distributed.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _all_min(values: Sequence[int], group, world, model) -> List[int]:
    if world == 1:
        return list(values)
    device = next(model.parameters()).device
    if torch.distributed.get_backend(group) == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor(list(values), dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN, group=group)
    return t.tolist()
