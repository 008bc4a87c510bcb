"""The snapshot format: one model's weights at one update, as one file or object.

Layout of a store (a directory or an object-store prefix, ``fairseq_codistill.exchange.storage``)::

    model{i}/snapshot-{update:010d}.cds   one complete snapshot of model i
    model{i}/lease.json                    model i's lease (``fairseq_codistill.exchange.lease``)

A snapshot is ``payload | header | u32 header length | u32 header CRC | MAGIC``: the
payload is ``torch.save(state_dict)`` (tensors only, so ``torch.load(weights_only=True)``
reads it), the header is JSON with the format version, model id, update number, dtype,
payload length, CRC-32 of the payload and the metadata needed to rebuild the model; the
trailer holds the header's own CRC-32, so a damaged byte anywhere is caught. The header
sits at the end so the writer streams the payload and its CRC in one pass.

dtypes: fp32, fp16, bf16 cast every floating tensor; int8 quantises weight matrices per
output channel (``fairseq_codistill.exchange.quantize``), about a quarter of fp32's bytes.

Writers keep their newest ``KEEP`` versions; a reader picks the newest and, since a
version is pruned only after ``KEEP`` newer ones exist, has ``KEEP - 1`` intervals to
read it. One that vanished before it was read is simply retried at the next interval.
"""
from __future__ import annotations

import errno
import io
import json
import mmap
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple

import torch

from fairseq_codistill.exchange.quantize import dequantize_int8, is_int8_payload, quantize_int8, unpack_int8
from fairseq_codistill.exchange.storage import READ_BLOCK, as_store, model_prefix

FORMAT_VERSION = 1
MAGIC = b"CODISTL\x01"
KEEP = 2
# What a floating tensor is stored as; int8 quantises copies kept in fp32 until written.
SNAPSHOT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                   "int8": torch.float32}
_TRAILER = struct.Struct("<II8s")  # header length, header CRC-32, MAGIC
_NAME = re.compile(r"^snapshot-(\d{10})\.cds$")
# A header is a few KB; anything claiming more is garbage, not a snapshot.
_MAX_HEADER_BYTES = 1 << 20
_TAIL_BYTES = 256 << 10  # read from the end of a large snapshot: its trailer and header
# torch.load finds a zip's directory only within 64 KiB of the end (miniz's search): it
# loads the payload in place only when the header and trailer after it are shorter.
_ZIP_TAIL_BYTES = 32 << 10


class SnapshotError(Exception):
    """A snapshot that cannot be used: torn, corrupt, foreign or from the future."""


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot found by listing, before it is read."""

    model_id: int
    num_updates: int
    key: str  # in its store


@dataclass
class Snapshot:
    """A snapshot read and verified in full."""

    model_id: int
    num_updates: int
    dtype: str
    meta: dict
    state_dict: Dict[str, torch.Tensor]
    nbytes: int


def snapshot_key(model_id: int, num_updates: int) -> str:
    return f"{model_prefix(model_id)}/snapshot-{num_updates:010d}.cds"


def cast_state_dict(state_dict: Dict[str, torch.Tensor], dtype: str,
                    out: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """CPU copies of the tensors, floating-point ones cast to the snapshot dtype (fp32
    for int8, which ``write_snapshot`` quantises off the training thread).

    Always copies (``.to`` of a CPU fp32 tensor to fp32 would return the live parameter,
    which the background writer would then save while the optimizer changes it), and
    copies tied weights once: they stay one tensor, so torch.save stores them once.
    ``out``: an earlier result, no longer being written, whose tensors are filled again
    where they fit (fresh model-sized memory costs more than the cast on a CPU).
    """
    target = SNAPSHOT_DTYPES[dtype]
    result, copies = {}, {}
    for name, t in state_dict.items():
        t = t.detach()
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key not in copies:
            want = target if t.is_floating_point() else t.dtype
            buf = None if out is None else out.get(name)
            if buf is not None and (buf.dtype, buf.shape, buf.device.type) == (want, t.shape, "cpu") \
                    and buf.is_contiguous():
                copies[key] = buf.copy_(t)
            else:
                copies[key] = t.to(device="cpu", dtype=want, copy=True).contiguous()
        result[name] = copies[key]
    return result


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


def encode(f: BinaryIO, model_id: int, num_updates: int, state_dict: Dict[str, torch.Tensor],
           meta: Optional[dict], dtype: str) -> None:
    """Write one snapshot into ``f``. For int8, ``state_dict`` may be quantised already
    (``quantize_int8``'s payload: LocalSGD and DiLoCo quantise on the training thread,
    since they average what their peers read)."""
    quantize = dtype == "int8" and not is_int8_payload(state_dict)
    payload = quantize_int8(state_dict) if quantize else state_dict
    crc_f = _save_without_zip_crc(payload, f)
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


def write_snapshot(store, model_id: int, num_updates: int, state_dict: Dict[str, torch.Tensor],
                   meta: Optional[dict] = None, dtype: str = "fp16", keep: int = KEEP,
                   create_only: bool = False) -> str:
    """Publish ``state_dict`` (already on the CPU, see ``cast_state_dict``) into ``store``
    (a ``Store``, a path or a URL), prune the older ones; returns its key.
    ``create_only``: fail with ``FileExistsError`` rather than replace a snapshot of the
    same update (another job writing as this model)."""
    if dtype not in SNAPSHOT_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(SNAPSHOT_DTYPES)} (got {dtype!r})")
    store = as_store(store)
    key = snapshot_key(model_id, num_updates)
    store.write(key, lambda f: encode(f, model_id, num_updates, state_dict, meta, dtype),
                create_only=create_only)
    prune(store, model_id, keep)
    return key


def prune(store, model_id: int, keep: int = KEEP) -> None:
    """Delete all but the newest ``keep`` snapshots of ``model_id``."""
    store = as_store(store)
    for info in list_snapshots(store, model_id)[keep:]:
        store.delete(info.key)


def list_snapshots(store, model_id: int) -> List[SnapshotInfo]:
    """Complete snapshots of ``model_id``, newest first. Temp files never match."""
    store = as_store(store)
    prefix = model_prefix(model_id)
    found = []
    for name in store.list(prefix):
        m = _NAME.match(name)
        if m:
            found.append(SnapshotInfo(model_id, int(m.group(1)), f"{prefix}/{name}"))
    return sorted(found, key=lambda s: s.num_updates, reverse=True)


def read_snapshot(where, key: Optional[str] = None, dequantize: bool = True) -> Snapshot:
    """Read and verify a whole snapshot: ``key`` in the store ``where``, or the file
    ``where`` itself. Any defect raises ``SnapshotError``, nothing partial.
    ``dequantize=False``: an int8 snapshot's ``state_dict`` is its payload, checked
    (``unpack_int8`` reads it without a model-sized copy)."""
    name = f"{where}/{key}" if key is not None else str(where)
    try:
        path = Path(where) if key is None else as_store(where).local_path(key)
        if path is not None:
            return _read_file(path, name, dequantize)
        with as_store(where).open(key) as f:
            return _read(f, name, dequantize)
    except OSError as e:
        raise SnapshotError(f"cannot read {name}: {e}") from e


def parse_snapshot(data: bytes, name="<bytes>") -> Snapshot:
    """``read_snapshot`` of bytes in memory."""
    return _read(io.BytesIO(data), name)


def _read_payload(f: BinaryIO, nbytes: int) -> Tuple[io.BytesIO, int]:
    """The first ``nbytes`` of ``f`` and their CRC-32, read in READ_BLOCK ranges into one
    buffer (nothing is held twice)."""
    buf, crc = io.BytesIO(), 0
    f.seek(0)
    while buf.tell() < nbytes:
        chunk = f.read(min(READ_BLOCK, nbytes - buf.tell()))
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        buf.write(chunk)
    buf.seek(0)
    return buf, crc


def _read(f: BinaryIO, name: str, dequantize: bool = True) -> Snapshot:
    """Verify and load one snapshot from a reader. Reads are few and large, since from an
    object store each is a GET: a snapshot of up to READ_BLOCK bytes in one read, used in
    place; a larger one as its tail (trailer and header) and then its payload in ranges."""
    size = f.seek(0, io.SEEK_END)
    whole = None
    if size <= READ_BLOCK:
        f.seek(0)
        whole = f.read(size)
        tail, tail_start = memoryview(whole), 0
    else:
        tail_start = size - _TAIL_BYTES
        f.seek(tail_start)
        tail = memoryview(f.read(_TAIL_BYTES))

    def read_at(offset: int, n: int) -> bytes:
        f.seek(offset)
        return f.read(n)

    header, payload_bytes = _header(tail, tail_start, size, read_at, name)
    if whole is not None:
        payload_crc = zlib.crc32(memoryview(whole)[:payload_bytes])
        # torch.load reads the payload out of the whole snapshot, no copy made, where the
        # zip reader finds its directory past the header
        payload = io.BytesIO(whole if size - payload_bytes <= _ZIP_TAIL_BYTES
                             else whole[:payload_bytes])
    else:
        payload, payload_crc = _read_payload(f, payload_bytes)
    _check_payload(header, payload_crc, name)
    state_dict = _load(lambda: torch.load(payload, map_location="cpu", weights_only=True),
                       header, name, dequantize)
    return _snapshot(header, state_dict, size, name)


def _read_file(path: Path, name: str, dequantize: bool = True) -> Snapshot:
    """A snapshot in a file, mapped rather than read: the CRC runs over the page cache and
    ``torch.load(mmap=True)`` maps the tensors, so that reading 420 MB costs one pass (the
    CRC) instead of three copies (read, buffer, tensors) into memory that must first be
    allocated. Snapshots are written once and renamed into place, never changed in place.
    torch.load takes a path: ``/proc/self/fd/N`` names the file already open, so a writer
    pruning or replacing the path meanwhile cannot hand it another file or none."""
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        size = stat.st_size
        if size < _TRAILER.size:
            raise SnapshotError(f"{name} is not a complete snapshot (no end marker)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            tail_start = max(0, size - _TAIL_BYTES)
            header, payload_bytes = _header(memoryview(m[tail_start:]), tail_start, size,
                                            lambda offset, n: m[offset:offset + n], name)
            with memoryview(m) as whole, whole[:payload_bytes] as payload:
                _check_payload(header, zlib.crc32(payload), name)
        if size - payload_bytes > _ZIP_TAIL_BYTES:  # beyond the zip reader's search
            return _read(f, name, dequantize)
        opened = f"/proc/self/fd/{f.fileno()}"
        by_path = not os.path.exists(opened)  # no /proc: then check that it names the file
        try:
            state_dict = _load(lambda: torch.load(path if by_path else opened, mmap=True,
                                                  map_location="cpu", weights_only=True),
                               header, name, dequantize)
        except SnapshotError:
            if by_path:
                _check_unmoved(path, stat.st_ino)  # a pruned file is gone, not corrupt
            raise
        if by_path:
            _check_unmoved(path, stat.st_ino)
    return _snapshot(header, state_dict, size, name)


def _check_unmoved(path: Path, inode: int) -> None:
    """OSError EBUSY, as s3fs says it of a replaced object (the exchange reads again at its
    next step), unless ``path`` still names the file ``inode``."""
    try:
        moved = os.stat(path).st_ino != inode
    except FileNotFoundError:
        moved = True
    if moved:
        raise OSError(errno.EBUSY, "pruned or replaced while it was read", str(path))


def _header(tail: memoryview, tail_start: int, size: int, read_at: Callable[[int, int], bytes],
            name: str) -> Tuple[dict, int]:
    """The verified header of a snapshot of ``size`` bytes, from its last bytes ``tail``
    (which start at ``tail_start``), and the payload's length."""
    if size < _TRAILER.size:
        raise SnapshotError(f"{name} is not a complete snapshot (no end marker)")
    header_len, header_crc, magic = _TRAILER.unpack(tail[-_TRAILER.size:])
    if magic != MAGIC:
        raise SnapshotError(f"{name} is not a complete snapshot (no end marker)")
    header_end = size - _TRAILER.size
    if header_len > min(_MAX_HEADER_BYTES, header_end):
        raise SnapshotError(f"{name} has a bad header length ({header_len})")
    if header_end - header_len >= tail_start:
        header_bytes = bytes(tail[header_end - header_len - tail_start:header_end - tail_start])
    else:  # a header longer than the tail read
        header_bytes = read_at(header_end - header_len, header_len)
    if zlib.crc32(header_bytes) != header_crc:
        raise SnapshotError(f"{name} fails its header checksum")
    try:
        header = json.loads(header_bytes)
        version = header["format_version"]
        payload_bytes = int(header["payload_bytes"])
        int(header["crc32"])
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{name} has an unreadable header: {e}") from e
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"{name} has snapshot format {version}; this fairseq-codistill reads format "
            f"{FORMAT_VERSION}: run the same version in every model")
    if payload_bytes != header_end - header_len:
        raise SnapshotError(f"{name} is truncated or padded (payload length mismatch)")
    return header, payload_bytes


def _check_payload(header: dict, payload_crc: int, name: str) -> None:
    if payload_crc != int(header["crc32"]):
        raise SnapshotError(f"{name} fails its checksum")


def _load(load: Callable[[], object], header: dict, name: str,
          dequantize: bool = True) -> Dict[str, torch.Tensor]:
    """The state dict ``load()`` returns, checked (and dequantised for int8 unless not
    ``dequantize``)."""
    try:
        state_dict = load()
        if header.get("dtype") == "int8":
            if dequantize:
                state_dict = dequantize_int8(state_dict)
            else:
                unpack_int8(state_dict)  # checked; kept as stored
    except Exception as e:  # a valid CRC over an invalid pickle: foreign writer
        raise SnapshotError(f"{name} does not hold a state dict: {e}") from e
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise SnapshotError(f"{name} does not hold a state dict of tensors")
    return state_dict


def _snapshot(header: dict, state_dict: Dict[str, torch.Tensor], size: int, name: str) -> Snapshot:
    try:
        return Snapshot(
            model_id=int(header["model_id"]), num_updates=int(header["num_updates"]),
            dtype=str(header["dtype"]), meta=dict(header.get("meta") or {}),
            state_dict=state_dict, nbytes=size,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"{name} has an incomplete header: {e}") from e
