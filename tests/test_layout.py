"""The package's layout: every module that moved fails on import naming its new place, and
that place imports; the exchange's policies stay importable from fairseq_codistill.exchange."""
import importlib

import pytest

import fairseq_codistill


@pytest.mark.parametrize("old", sorted(fairseq_codistill.MOVED))
def test_an_old_import_path_names_the_new_one(old):
    new = "fairseq_codistill." + fairseq_codistill.MOVED[old].split()[0]
    with pytest.raises(ModuleNotFoundError, match=rf"^fairseq_codistill\.{old} moved to {new}"):
        importlib.import_module(f"fairseq_codistill.{old}")
    with pytest.raises(ImportError, match=rf"moved to {new}"):
        exec(f"from fairseq_codistill import {old}", {})
    assert importlib.import_module(new).__name__ == new


def test_the_exchange_keeps_its_names():
    from fairseq_codistill.exchange import ExchangeConfig, PeerExchange, WeightAveraging, check_exchange_dir
    from fairseq_codistill.exchange.averaging import WeightAveraging as averaging
    from fairseq_codistill.exchange.peers import PeerExchange as peers

    assert PeerExchange is peers and WeightAveraging is averaging
    assert callable(check_exchange_dir) and ExchangeConfig.__module__ == "fairseq_codistill.exchange.peers"
    with pytest.raises(AttributeError):
        fairseq_codistill.exchange.NoSuchThing  # noqa: B018
