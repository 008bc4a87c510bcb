"""The exchange: how models share snapshots, whatever front end trains them.

    snapshot.py   the snapshot format (header, CRCs; fp32/fp16/bf16/int8)
    quantize.py   int8 snapshots: per-output-channel weights
    storage.py    a directory or an fsspec store (s3://...) behind one interface
    lease.py      membership: who trains as which model
    peers.py      Exchange (store, lease, publishing) and PeerExchange, codistillation's
                  policy: when to publish and read, which version to use
    averaging.py  WeightAveraging, LocalSGD's and DiLoCo's policy over the same snapshots

No fairseq import. The policies' names are importable from here too (on first use, so
that the launcher, which writes through ``storage``, never imports torch).
"""
_PUBLIC = {"Exchange": "peers", "PeerExchange": "peers", "ExchangeConfig": "peers",
           "check_exchange_dir": "peers", "peer_ids": "peers", "place_peer": "peers",
           "METHODS": "peers", "AVERAGING_METHODS": "peers", "TOPOLOGIES": "peers",
           "WeightAveraging": "averaging"}


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
