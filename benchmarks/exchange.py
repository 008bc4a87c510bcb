"""What publishing and loading peer snapshots costs, against the store's own speed.

For a transformer-big-sized model (about 210M parameters, ``--params``) and each
snapshot dtype, interleaved rounds time:

    publish   ``cast_state_dict`` (on the training thread) and ``write_snapshot``
              (serialise, CRC, fsync, rename; on the writer thread in training)
    load      ``read_snapshot`` (read, CRC check, deserialise; on the reader thread)
    disk      the same number of bytes written in 1 MiB requests + fsync, and read back
              into memory in 64 MiB requests: the floor any snapshot format pays

Before each read the file's pages are dropped from the page cache with
posix_fadvise(DONTNEED); the share of the file still cached is printed, since the
kernel may keep it. The disk's throughput is the median over its rounds of the same
size: a large file writes slower per byte once the kernel throttles dirty pages, so an
840 MB fp32 snapshot is compared with 840 MB of plain writes, not with pooled sizes:

    write_fraction_<dtype> = snapshot write throughput / disk write throughput (>= 0.5)
    read_fraction_<dtype>  = snapshot read throughput / disk read throughput   (>= 0.5)

``--dir`` may also be an object store URL (``s3://bucket/prefix``, any fsspec URL).
Publish is then ``write_snapshot`` into the store (serialise, CRC, upload), load is
``read_snapshot`` (ranged GETs, CRC check, deserialise), and the baseline is the
store's plain transfer of the same bytes, one call each way: ``fs.pipe_file`` (put)
and ``fs.cat_file`` (get), as fsspec does them (s3fs: a multipart upload of 50 MiB
parts above 100 MiB, concurrent 50 MiB ranged GETs above 50 MiB). No page cache to drop:

    write_fraction_<dtype> = snapshot write throughput / plain put throughput (>= 0.8)
    read_fraction_<dtype>  = snapshot read throughput / plain get throughput  (>= 0.8)

Everything goes under a fresh prefix (``<url>/exchange-bench-<random>``), deleted at
the end; the bucket must exist (the benchmark creates none: against real S3 a typo
would make a stray bucket). Credentials and endpoint come from the environment, as for
training (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). For every dtype:

    bytes_per_exchange_<dtype> = bytes of one snapshot object: what one model writes
                                 per exchange, and what each of its peers reads

Then a ``PeerExchange`` runs real updates of the model while it loads a peer in the
background, and the time spent inside ``PeerExchange.step`` on the update that swaps
the peer in is compared with one update of the model:

    stall_swap_<dtype>     = main-thread time in step() at a swap / one update  (< 0.05)

and a ``WeightAveraging`` (``--codistill-method localsgd`` and ``diloco``) takes two
averaging steps with its peer's snapshot already in the store, so that it waits for
nobody; what a step costs beyond waiting (the CPU copy it publishes, reading the peer's
snapshot, the mean and, for DiLoCo, the outer step) is compared with one update, for the
second step (what every later one costs) and the first (which allocates the published
copy and DiLoCo's momentum once):

    averaging_<method>_<dtype>       = (publish + read + mean [+ outer step]) / one update  (< 0.1)
    averaging_first_<method>_<dtype> = the same, of the first step

    python benchmarks/exchange.py            # 210M parameters, fp32 fp16 bf16 int8
    python benchmarks/exchange.py --quick    # 20M parameters: under a minute

Against a local S3 server (moto, installed with the s3 test extras)::

    .venv/bin/moto_server -H 127.0.0.1 -p 5555 &
    export AWS_ENDPOINT_URL=http://127.0.0.1:5555 AWS_ACCESS_KEY_ID=testing \
           AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
    .venv/bin/python -c "import s3fs; s3fs.S3FileSystem().mkdir('bench')"   # the bucket
    .venv/bin/python benchmarks/exchange.py --dir s3://bench/x --quick

moto reads a whole object for every GET, ranged or not, and slices it: there, a read in
N ranged GETs (read_snapshot's) costs N whole-object reads on the server, which a real
object store does not charge, so moto's read fractions say little about S3's.
"""
import argparse
import ctypes
import io
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import List

import torch

import common
from fairseq_codistill import options as opts
from fairseq_codistill.exchange.peers import PeerExchange
from fairseq_codistill.exchange.snapshot import (
    SNAPSHOT_DTYPES,
    cast_state_dict,
    read_snapshot,
    write_snapshot,
)
from fairseq_codistill.exchange.storage import LocalStore, Store, open_store

# The disk baseline's request sizes: the fastest plain patterns found on a virtual disk
# (1 MiB writes beat 64 MiB ones by 2-4x there; reads like large requests).
WRITE_CHUNK, READ_CHUNK = 1 << 20, 64 << 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", type=float, default=210e6,
                   help="model size: a transformer-big layout scaled to this many parameters "
                        "(210e6 is transformer big with a 32K joined vocabulary)")
    p.add_argument("--vocab", type=int, default=32768, help="joined vocabulary (WMT'16 En-De BPE)")
    p.add_argument("--dtypes", nargs="+", default=list(SNAPSHOT_DTYPES), choices=list(SNAPSHOT_DTYPES))
    p.add_argument("--reps", type=int, default=5,
                   help="timed rounds of write/read; medians (a virtual disk's speed varies a lot)")
    p.add_argument("--dir", default=None,
                   help="where snapshots go (default: a temp dir); point it at the shared "
                        "filesystem or the object store URL (s3://bucket/prefix) the models "
                        "will use to measure that instead")
    p.add_argument("--update-tokens", type=int, default=None,
                   help="tokens of the reference update (default 256 on a CPU, where bigger "
                        "batches take minutes, which only makes the stall look smaller; "
                        "3584 on a GPU, the paper's --max-tokens)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--fp16", action="store_true", help="train in fp16 (GPU), as fairseq --fp16")
    p.add_argument("--bf16", action="store_true", help="train in bf16, as fairseq --bf16")
    p.add_argument("--quick", action="store_true", help="--params 20e6 --reps 2: under a minute")
    common.add_machine_args(p, clock=False)
    args = p.parse_args(argv)
    args.clock = "wall"  # disk and thread waits are the point: CPU time would hide them
    if args.quick:
        args.params, args.reps = 20e6, 2
    if args.update_tokens is None:
        args.update_tokens = 3584 if args.device == "cuda" else 256
    return args


# -- the disk ------------------------------------------------------------------------


def drop_cache(path) -> None:
    """Ask the kernel to forget the (clean, fsynced) pages of ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path):
    """Share of ``path``'s pages in the page cache (mincore), or None if unknown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        size = os.path.getsize(path)
        pages = (size + os.sysconf("SC_PAGE_SIZE") - 1) // os.sysconf("SC_PAGE_SIZE")
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        finally:
            os.close(fd)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            return sum(v & 1 for v in vec) / pages
        finally:
            libc.munmap(addr, size)
    except (OSError, AttributeError):
        return None


def disk_write(path: Path, data: memoryview) -> None:
    with open(path, "wb") as f:
        for i in range(0, len(data), WRITE_CHUNK):
            f.write(data[i:i + WRITE_CHUNK])
        f.flush()
        os.fsync(f.fileno())


def disk_read(path: Path) -> bytearray:
    size = os.path.getsize(path)
    buf = bytearray(size)  # the reader must hold the bytes, as read_snapshot does
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        pos = 0
        while pos < size:
            n = f.readinto(view[pos:pos + READ_CHUNK])
            if not n:
                break
            pos += n
    return buf


class DiskBaseline:
    """Plain writes and reads of a local directory, read from a dropped page cache."""

    name, put_name, get_name, target = "disk", "disk write", "disk read", 0.5

    def __init__(self, store: LocalStore):
        self.store = store

    def data(self, view: memoryview) -> memoryview:
        return view

    def put(self, key: str, data) -> None:
        disk_write(self.store.root / key, data)

    def get(self, key: str) -> bytearray:
        return disk_read(self.store.root / key)

    def uncache(self, key: str):
        """Drop ``key``'s pages; the share still cached (None if unknown)."""
        path = self.store.root / key
        drop_cache(path)
        return cached_fraction(path)

    def delete(self, key: str) -> None:
        self.store.delete(key)


class StoreBaseline:
    """The object store's own transfer of the same bytes, one fsspec call each way."""

    name, put_name, get_name, target = "plain", "plain put", "plain get", 0.8

    def __init__(self, store: Store):
        self.store, self.fs = store, store.fs

    def data(self, view: memoryview) -> bytes:
        return bytes(view)  # what a client's put takes; copied before the clock starts

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self.store._path(key), data)

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self.store._path(key))

    def uncache(self, key: str):
        return None  # no page cache between us and the store

    def delete(self, key: str) -> None:
        self.store.delete(key)


def object_size(store: Store, key: str) -> int:
    with store.open(key) as f:
        return f.seek(0, io.SEEK_END)


def timed(fn, device: torch.device = torch.device("cpu")):
    """(wall seconds, result) of ``fn()``, GPU work included."""
    common.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    common.synchronize(device)
    return time.perf_counter() - t0, out


# -- publish and load ----------------------------------------------------------------


def io_rounds(model, dtypes, reps, store: Store, baseline, device):
    """Per dtype, per round: cast, then snapshot and plain writes, then snapshot and plain
    reads, each pair in alternating order. An untimed first write gives the sizes."""
    t = {d: {k: [] for k in ("cast", "write", "plain_write", "read", "plain_read")} for d in dtypes}
    size = {d: object_size(store, write_snapshot(store, i, 0, cast_state_dict(model.state_dict(), d),
                                                 dtype=d, keep=1))
            for i, d in enumerate(dtypes)}
    noise = memoryview(os.urandom(1 << 20) * (max(size.values()) // (1 << 20) + 1))
    cached = []
    for r in range(1, reps + 1):
        for i, dtype in enumerate(dtypes):
            dt, state = timed(lambda: cast_state_dict(model.state_dict(), dtype), device)
            t[dtype]["cast"].append(dt)
            key, plain = None, f"{baseline.name}-{dtype}.bin"
            data = baseline.data(noise[:size[dtype]])

            def write():
                nonlocal key
                key = write_snapshot(store, i, r, state, dtype=dtype, keep=1)

            writes = [("write", write), ("plain_write", lambda: baseline.put(plain, data))]
            reads = [("read", lambda: read_snapshot(store, key)),
                     ("plain_read", lambda: baseline.get(plain))]
            for name, fn in (writes if r % 2 else writes[::-1]):
                t[dtype][name].append(timed(fn)[0])
            del state, data
            for k in (key, plain):  # both read from a dropped cache
                cached.append(baseline.uncache(k))
            for name, fn in (reads if r % 2 else reads[::-1]):
                dt, out = timed(fn)
                t[dtype][name].append(dt)
                del out
            baseline.delete(plain)
    return t, size, cached


# -- the stall at a swap -------------------------------------------------------------


def swap_stalls(task, cfg, model, optimizer, sample, dtype, root: str, device, max_updates=50):
    """Main-thread seconds in PeerExchange.step at a publish and at two swaps.

    A peer snapshot is in ``root`` (a directory or a store URL) at update K; step(K)
    publishes ours and starts loading the peer in the background; real updates run
    until a step swaps it in (the first swap also builds the peer module). Then a newer
    peer snapshot at 2K, again.
    """
    interval = 1000
    exchange = PeerExchange(
        opts.exchange_config(opts.defaults(
            codistill_dir=root, codistill_id=0, codistill_interval=interval,
            codistill_snapshot_dtype=dtype, codistill_peer_dtype="same")),
        build_peer=lambda meta: task.build_model(cfg.model),
    )
    out = {"publish": [], "swap": [], "updates_while_loading": []}
    try:
        for k in (1, 2):
            write_snapshot(root, 1, k * interval, cast_state_dict(model.state_dict(), dtype), dtype=dtype)
            step = k * interval
            dt, _ = timed(lambda: exchange.step(step, model), device)
            out["publish"].append(dt)
            loads = exchange.num_loads
            while exchange.num_loads == loads:
                if step - k * interval > max_updates:
                    raise RuntimeError(f"the peer snapshot did not load within {max_updates} updates")
                dt, _ = timed(lambda: common.update(task, model, exchange_criterion(task, exchange),
                                                    optimizer, sample), device)
                out["updates_while_loading"].append(dt)
                step += 1
                dt, _ = timed(lambda: exchange.step(step, model), device)
            out["swap"].append(dt)  # (if the load beat step(K), step(K) swapped too)
            exchange.wait_for_write()
        out["peers"] = exchange.active_peers()
    finally:
        exchange.close()
    return out


def averaging_costs(model, optimizer, dtype: str, root: str, method: str) -> List[dict]:
    """Seconds of model 0's first two averaging steps, model 1's snapshot of that update
    in ``root`` already, by part: publish, wait, read, average. The first allocates what
    the later ones reuse (the published copy, DiLoCo's momentum)."""
    from fairseq_codistill.exchange.averaging import WeightAveraging
    from fairseq_codistill.fairseq_plugin.task import trained_weights

    interval = 1000
    cfg = opts.exchange_config(opts.defaults(
        codistill_dir=root, codistill_id=0, codistill_interval=interval, codistill_method=method,
        codistill_snapshot_dtype=dtype, codistill_wait_for_peers=60.0))
    from fairseq_codistill.exchange import lease

    # model 1's lease, as its job would hold it: the start-up check finds it at once
    peer = lease.acquire(open_store(root), 1, 2, "all", method=method, interval=interval)
    exchange = WeightAveraging(cfg)
    try:
        weights = trained_weights(model, optimizer)
        exchange.step(0, lambda: weights)  # DiLoCo keeps the shared weights from here
        out = []
        for update in (interval, 2 * interval):
            write_snapshot(root, 1, update, cast_state_dict(weights, dtype), dtype=dtype)
            exchange.step(update, lambda: weights)
            exchange.wait_for_write()
            if exchange.last_averaged != [0, 1]:
                raise RuntimeError(f"averaged {exchange.last_averaged}, not models [0, 1]")
            out.append(dict(exchange.seconds))
        return out
    finally:
        exchange.close()
        peer.release()


def exchange_criterion(task, exchange):
    return common.codistill_criterion(task, exchange.active_peers(), alpha=1.0)


def open_root(where):
    """(url, store, cleanup) for --dir: a temp dir if none, the directory itself, or a
    fresh prefix under the URL, which ``cleanup()`` deletes (snapshots are hundreds of MB)."""
    if where is None:
        root = tempfile.mkdtemp(prefix="codistill-bench-exchange-")
        return root, open_store(root), lambda: shutil.rmtree(root, ignore_errors=True)
    store = open_store(where)
    if isinstance(store, LocalStore):
        store.root.mkdir(parents=True, exist_ok=True)
        return where, store, lambda: None
    url = f"{where.rstrip('/')}/exchange-bench-{uuid.uuid4().hex[:8]}"
    store = open_store(url)
    try:
        store.check()
    except ValueError as e:  # it names training's flag: this script's is --dir
        raise SystemExit(str(e).replace("--codistill-dir", "--dir", 1)) from None
    return url, store, lambda: store.fs.rm(store.root, recursive=True)


def main(argv=None):
    args = parse_args(argv)
    device = common.setup_device(args)
    root, store, cleanup = open_root(args.dir)  # a missing bucket shows before the model builds
    extra = ["--cpu"] if args.device == "cpu" else []
    extra += ["--fp16"] if args.fp16 else ["--bf16"] if args.bf16 else []
    cfg, task = common.fairseq_setup(common.big_transformer_args(args.params, args.vocab),
                                     args.vocab, args.vocab, extra)
    train_dtype = common.train_dtype(cfg)
    dt_build, model = timed(lambda: common.prepare(task.build_model(cfg.model), train_dtype, device),
                            device)
    optimizer = common.build_optimizer(cfg, model)
    sample = common.make_batch(task, args.update_tokens, args.seq_len, device)
    local = isinstance(store, LocalStore)
    baseline = DiskBaseline(store) if local else StoreBaseline(store)
    try:
        io_t, size, cached = io_rounds(model, args.dtypes, args.reps, store, baseline, device)
        stalls = {}
        for d in args.dtypes:
            # each dtype's exchange in its own directory or prefix
            stalls[d] = swap_stalls(task, cfg, model, optimizer, sample, d, f"{root}/x-{d}", device)
            if d != args.dtypes[-1]:
                del stalls[d]["peers"]  # one peer model in memory at a time
        # The reference: updates with a loaded peer and no exchange work in flight.
        criterion = common.codistill_criterion(task, stalls[args.dtypes[-1]].pop("peers"), alpha=1.0)
        ref = common.interleaved(
            {"update": lambda: common.update(task, model, criterion, optimizer, sample)},
            reps=3, warmup=0, device=device)["update"]
        criterion = None  # frees the peer model: averaging needs the memory
        averaging = {(m, d): averaging_costs(model, optimizer, d, f"{root}/avg-{m}-{d}", m)
                     for m in ("localsgd", "diloco") for d in args.dtypes}
    finally:
        cleanup()

    print(f"# exchange: {common.num_params(model) / 1e6:.1f}M params "
          f"({' '.join(common.big_transformer_args(args.params, args.vocab)[1:])}), "
          f"training in {str(train_dtype).replace('torch.', '')} on {args.device}, snapshots in "
          f"{store.url}{'' if local else ' (deleted at the end)'}")
    print(common.machine_line(device, args))
    if local:
        known = [c for c in cached if c is not None]
        print("note  reads are after posix_fadvise(DONTNEED); share of the file still in the page "
              f"cache when read: {'unknown' if not known else f'max {max(known):.0%}'}")
    else:
        print(f"note  object store: plain put = {type(store.fs).__name__}.pipe_file, plain get = "
              "cat_file of the same number of bytes; snapshot read = read_snapshot's ranged GETs")
    print(f"time  build model                  {dt_build:9.4f} s  (the first swap builds the peer too)")
    print(common.time_line(f"update ({sample['ntokens']} tokens, 1 peer)", ref))
    t_update = common.median(ref)
    # The baseline's speed for the same number of bytes: the median of the plain rounds
    # of that dtype's size (per-byte speed falls with size once dirty pages are throttled).
    plain = {d: {k: [size[d] / 1e6 / x for x in io_t[d][k]] for k in ("plain_write", "plain_read")}
             for d in args.dtypes}
    fractions = {}
    for d in args.dtypes:
        t = {k: common.median(v) for k, v in io_t[d].items()}
        mb = size[d] / 1e6
        write_rate, read_rate = mb / t["write"], mb / t["read"]
        print(f"size  snapshot {d:<5s} {common.fmt_bytes(size[d]):>10s}   cast {t['cast']:.3f} s, "
              f"write {t['write']:.3f} s ({write_rate:.0f} MB/s), read {t['read']:.3f} s "
              f"({read_rate:.0f} MB/s); medians of {len(io_t[d]['write'])}")
        w, r = plain[d]["plain_write"], plain[d]["plain_read"]
        put, get = ("write", "read") if local else ("put", "get")
        print(f"{baseline.name:<5s} same size   {put} {common.median(w):.0f} MB/s ({common.spread(w)}), "
              f"{get} {common.median(r):.0f} MB/s ({common.spread(r)})")
        fractions[d] = (write_rate / common.median(w), read_rate / common.median(r))
    for d in args.dtypes:
        w, r = fractions[d]
        target = f">= {baseline.target}"
        print(common.ratio_line(f"write_fraction_{d}", w,
                                f"snapshot write MB/s / {baseline.put_name} MB/s", target,
                                w >= baseline.target))
        print(common.ratio_line(f"read_fraction_{d}", r,
                                f"snapshot read MB/s / {baseline.get_name} MB/s", target,
                                r >= baseline.target))
    for d in args.dtypes:
        print(bytes_line(f"bytes_per_exchange_{d}", size[d],
                         "the snapshot object: one model writes it per exchange, each peer reads it"))
    for d in args.dtypes:
        s = stalls[d]
        print(f"time  step() at swaps {d:<5s}   first {s['swap'][0]:.4f} s (builds the peer), "
              f"then {s['swap'][1]:.4f} s; at publish {common.median(s['publish']):.4f} s; "
              f"{len(s['updates_while_loading'])} update(s) while loading, median "
              f"{common.median(s['updates_while_loading']):.3f} s")
        steady = s["swap"][1] / t_update
        print(common.ratio_line(f"stall_swap_{d}", steady, "step() at a swap / one update",
                                "< 0.05", steady < 0.05))
        print(common.ratio_line(f"stall_first_swap_{d}", s["swap"][0] / t_update,
                                "step() at the first swap, which builds the peer, / one update"))
        print(common.ratio_line(f"stall_publish_{d}", common.median(s["publish"]) / t_update,
                                "step() at a publish (cast to a CPU copy) / one update"))
        print(common.ratio_line(f"update_while_loading_{d}",
                                common.median(s["updates_while_loading"]) / t_update,
                                "update time while a peer loads in the background / one update"))


    for (method, d), steps in averaging.items():
        for which, t in zip(("first", "then"), steps):
            print(f"time  averaging {method:<8s} {d:<5s} {which:<5s} publish {t['publish']:.4f} s, "
                  f"read {t['read']:.4f} s, {'mean' if method == 'localsgd' else 'mean + outer step'} "
                  f"{t['average']:.4f} s (waited {t['wait']:.4f} s)")
        first, then = ((t["publish"] + t["read"] + t["average"]) / t_update for t in steps)
        print(common.ratio_line(f"averaging_{method}_{d}", then,
                                "an averaging step beyond waiting for the peers / one update",
                                "< 0.1", then < 0.1))
        print(common.ratio_line(f"averaging_first_{method}_{d}", first,
                                "the first averaging step, which allocates what the others reuse, "
                                "/ one update"))


def bytes_line(name: str, nbytes: int, what: str) -> str:
    """``bytes <name> = <int>``: a byte count, printed whole (a ratio line keeps 4 digits)."""
    return f"bytes {name} = {nbytes}   ({common.fmt_bytes(nbytes)}: {what})"


if __name__ == "__main__":
    main()
