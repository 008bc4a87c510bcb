"""Where snapshots and leases live: a local (or shared, mounted) directory, or any fsspec
store (``s3://bucket/prefix``, ``gs://``, ``az://``...).

One small interface, ``Store``, with two implementations; everything above it (the
snapshot format, the exchange's policy, leases) is written once against it. Keys are
``/``-separated paths relative to the store's root (``model0/snapshot-0000000040.cds``).

Both implementations make every write atomic, since other processes read them:

- ``LocalStore``: temp file + fsync + rename (a reader sees the old file or the new one).
- ``FsspecStore``: object stores have no rename, but an object appears only when its
  single PUT, or its multipart upload, completes; an upload that fails is aborted, so a
  reader sees all of an object or nothing. Where the store supports it, a create-only
  write (S3's If-None-Match) refuses to replace an object someone else wrote.

No torch import: the launcher writes its state through ``atomic_write`` without it.
Credentials come from the store's usual configuration (environment variables,
profiles, ``AWS_ENDPOINT_URL``, fsspec's ``FSSPEC_<PROTOCOL>_*`` settings); no URL or
message here carries one (``redact`` drops user:password from a URL).
"""
from __future__ import annotations

import abc
import errno
import inspect
import io
import logging
import os
import re
import tempfile
import threading
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, List, Optional

logger = logging.getLogger(__name__)

# Bounded waits for object stores, in the client library's own terms (botocore's), so a
# store that is down costs an exchange a few seconds, not minutes: botocore's defaults
# retry 5 times with backoff (about 20 s when the endpoint refuses connections) and wait
# 60 s to connect. A user's fsspec configuration (FSSPEC_S3_CONFIG_KWARGS...) wins.
CLIENT_DEFAULTS = {
    "s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                             "retries": {"max_attempts": 3, "mode": "standard"}}},
}
# Install hints for the optional extras, by protocol.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}
# Bytes per ranged GET when reading an object: a snapshot read in ranges against one plain
# GET of a 120 MB object on a local S3 server (moto, 2 busy cores, 4 runs each) was 0.66-0.83x
# in 32 MiB ranges, 0.71-1.04x in 64 MiB and 0.83-1.35x in 128 MiB. A range is also the
# most a read holds beyond the snapshot's own buffer.
READ_BLOCK = 64 << 20


class Store(abc.ABC):
    """A flat namespace of whole objects under one root."""

    url: str  # what --codistill-dir said, credentials removed: for messages

    @abc.abstractmethod
    def write(self, key: str, write: Callable[[BinaryIO], None], create_only: bool = False) -> None:
        """Write ``key`` through ``write(f)``, atomically. With ``create_only``, raise
        ``FileExistsError`` if ``key`` exists (where the store can tell)."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A seekable binary reader of ``key``; ``FileNotFoundError`` if it is gone."""

    def local_path(self, key: str) -> Optional[Path]:
        """The file that holds ``key`` where the store is a filesystem (readers may map
        it), else None."""
        return None

    @abc.abstractmethod
    def list(self, prefix: str) -> List[str]:
        """Names (not keys) directly under ``prefix``, as they are now (no cache)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a key that is already gone is not an error."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``ValueError`` naming --codistill-dir if this store can never work."""

    def clean(self, prefix: str) -> None:
        """Remove what an interrupted write left under ``prefix`` (nothing, for stores
        whose writes leave nothing)."""

    def read_bytes(self, key: str) -> bytes:
        """All of a small object (a lease, a probe) as it is now."""
        with self.open(key) as f:
            return f.read()

    def write_bytes(self, key: str, data: bytes, create_only: bool = False) -> None:
        self.write(key, lambda f: f.write(data), create_only=create_only)

    def __repr__(self):
        return f"{type(self).__name__}({self.url!r})"


def open_store(url: str) -> Store:
    """The store ``url`` names: a plain path or ``file://`` is a local directory; any
    other ``protocol://`` goes through fsspec."""
    url = str(url)
    if not url:
        raise ValueError("--codistill-dir is required: the directory or object store URL "
                         "shared by all models")
    protocol, sep, rest = url.partition("://")
    if not sep:
        return LocalStore(url)
    if protocol == "file":
        return LocalStore(rest)
    return FsspecStore(url)


def model_prefix(model_id: int) -> str:
    """Where model ``model_id`` keeps its snapshots and its lease."""
    return f"model{model_id}"


class Outage:
    """Whether the last access to a store failed: one warning when an outage starts and one
    line when the store answers again, from any thread (the exchange's writer and reader
    threads and the lease's heartbeat all access the store)."""

    def __init__(self):
        self._down = False
        self._lock = threading.Lock()

    def failed(self) -> bool:
        """Note a failed access; True if it starts an outage."""
        with self._lock:
            started, self._down = not self._down, True
        return started

    def answered(self) -> bool:
        """Note a successful access; True if it ends an outage."""
        with self._lock:
            ended, self._down = self._down, False
        return ended


def replaced_while_read(error: BaseException) -> bool:
    """Whether ``error`` says an object changed between two requests of one read: s3fs
    pins the GETs of an open file to the ETag its first request saw, and fails with
    FileExpired (EBUSY), or EINVAL for a failed pre-condition, once it was replaced."""
    if not isinstance(error, OSError):
        return False
    return error.errno == errno.EBUSY or (
        error.errno == errno.EINVAL and "pre-condition" in str(error))


def as_store(where) -> Store:
    """``where`` if it is a store already, else the store its path or URL names."""
    return where if isinstance(where, Store) else open_store(str(where))


def redact(url: str) -> str:
    """``url`` without a user:password part (``s3://key:secret@bucket`` is legal fsspec)."""
    return re.sub(r"^([a-z0-9+.-]+://)[^/@]*@", r"\1***@", str(url), flags=re.I)


# --------------------------------------------------------------------------------------
# A directory


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[BinaryIO], None], create_only: bool = False) -> None:
    """Write ``path`` through ``write(f)`` into a temp file, fsync it, then rename it in.

    Readers in other processes see the old file or the new one, never a torn one. With
    ``create_only`` the temp file is hard-linked in instead, which fails with
    ``FileExistsError`` if ``path`` exists (a link, unlike a rename, never replaces).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if create_only:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # renamed in
    _fsync_dir(path.parent)


def _link_new(tmp: str, path: Path) -> None:
    """Link ``tmp`` in as ``path`` unless ``path`` exists. On a filesystem without hard
    links (some FUSE mounts of object stores) it checks, then renames: not atomic
    against a second writer, but a snapshot still appears whole."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)


class LocalStore(Store):
    """A directory: local, or a shared filesystem every model mounts."""

    def __init__(self, root):
        self.root = Path(root)
        self.url = str(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def write(self, key, write, create_only=False):
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write, create_only=create_only)

    def open(self, key):
        return open(self._path(key), "rb")

    def local_path(self, key):
        return self._path(key)

    def list(self, prefix):
        try:
            return os.listdir(self._path(prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, key):
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def clean(self, prefix):
        """A job killed while writing leaves a (model-sized) temp file; only its owner
        writes under ``prefix``, and it is not writing yet, so every temp file is stale."""
        for name in self.list(prefix):
            if name.startswith(".tmp-"):
                self.delete(f"{prefix}/{name}")
                logger.info("codistill: removed %s/%s, left by an interrupted write", prefix, name)

    def check(self):
        path = self.root
        if path.exists() and not path.is_dir():
            raise ValueError(f"--codistill-dir {self.url} is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--codistill-dir {self.url}: cannot create it ({e.strerror})") from e
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise ValueError(f"--codistill-dir {self.url} is not writable ({e.strerror})") from e


# --------------------------------------------------------------------------------------
# An object store, through fsspec


class _ByteBuffer(io.RawIOBase):
    """A write-only file into a bytearray, which object-store clients take as a body
    (io.BytesIO would need a copy to give its bytes away)."""

    def __init__(self):
        self.buffer = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.buffer += b
        return len(b)


class FsspecStore(Store):
    """Any fsspec filesystem; written for object stores (S3, GCS, Azure), where an
    object becomes visible only once its upload completes."""

    def __init__(self, url: str):
        import fsspec  # fsspec comes with the extras that make a URL usable

        self.url = redact(url)
        protocol = url.partition("://")[0]
        options = {**CLIENT_DEFAULTS.get(protocol, {}), **fsspec.config.conf.get(protocol, {})}
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as e:
            extra = EXTRAS.get(protocol)
            hint = f": pip install 'fairseq-codistill[{extra}]'" if extra else ""
            raise ValueError(f"--codistill-dir {self.url}: no filesystem for {protocol}:// "
                             f"({e}){hint}") from e
        self.root = self.root.rstrip("/")
        self.create_only = True  # until the filesystem says it cannot
        # s3fs asks for an object's size first (a HEAD) unless told to read it in one GET.
        takes = inspect.signature(self.fs.cat_file).parameters
        self._one_request = {"max_concurrency": 1} if "max_concurrency" in takes else {}

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def write(self, key, write, create_only=False):
        # Serialised in memory first, then handed to the store's own one-call put (s3fs:
        # one PUT below 100 MiB, concurrent parts above, completed only once all are up
        # and aborted on failure): a failure while serialising uploads nothing, and the
        # upload runs at the client's own speed. The price is the object held in memory
        # while it uploads.
        data = _ByteBuffer()
        write(data)
        mode = "create" if create_only and self.create_only else "overwrite"
        try:
            self.fs.pipe_file(self._path(key), data.buffer, mode=mode)
        except (TypeError, NotImplementedError):
            if mode != "create":
                raise
            self.create_only = False  # this filesystem has no create-only put
            self.fs.pipe_file(self._path(key), data.buffer)

    def read_bytes(self, key):
        # One GET, never pinned to an ETag: a lease is replaced every heartbeat, and an
        # open file's HEAD-then-GET fails whenever a renewal falls between the two.
        return self.fs.cat_file(self._path(key), **self._one_request)

    def open(self, key):
        # No read-ahead cache: the snapshot reader asks for large ranges itself, and a
        # cache would hold a second copy of them.
        return self.fs.open(self._path(key), "rb", block_size=READ_BLOCK, cache_type="none")

    def list(self, prefix):
        try:
            paths = self.fs.ls(self._path(prefix), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in paths]

    def delete(self, key):
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def check(self):
        """Write, read back and delete a probe object: a missing bucket, no permission or
        an unreachable endpoint shows here, before training."""
        key = f".probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes(key, b"codistill probe")
            if self.read_bytes(key) != b"codistill probe":
                raise OSError("the probe object read back differs from what was written")
            self.delete(key)
        except FileNotFoundError as e:
            raise ValueError(f"--codistill-dir {self.url}: the bucket or container does not "
                             f"exist ({e})") from e
        except PermissionError as e:
            raise ValueError(f"--codistill-dir {self.url}: no permission to write and read "
                             f"objects there ({e}); check the store's credentials") from e
        except Exception as e:  # an unreachable endpoint, bad credentials ...
            raise ValueError(f"--codistill-dir {self.url}: the store cannot be used "
                             f"({type(e).__name__}: {e})") from e
