"""fairseq_codistill.options: each --codistill-* option defined once, read alike by fairseq's
dataclasses and the vision trainer's parser."""
import dataclasses

import pytest

from conftest import run, tool
from fairseq_codistill import options as opts
from fairseq_codistill.fairseq_plugin.criterion import CodistillCrossEntropyConfig
from fairseq_codistill.fairseq_plugin.task import CodistillTranslationConfig
from fairseq_codistill.vision.options import IMAGENET_ALPHA, build_parser


def fairseq_fields():
    fields = {}
    for cls in (CodistillCrossEntropyConfig, CodistillTranslationConfig):
        fields.update({f.name: f for f in dataclasses.fields(cls) if f.name.startswith("codistill_")})
    return fields


def vision_actions():
    return {a.dest: a for a in build_parser()._actions if a.dest.startswith("codistill_")}


def test_both_front_ends_have_exactly_the_shared_options():
    names = {opt.name for opt in opts.ALL_OPTIONS}
    assert set(fairseq_fields()) == names
    assert set(vision_actions()) == names


@pytest.mark.parametrize("opt", opts.ALL_OPTIONS, ids=lambda o: o.flag)
def test_defaults_and_help_come_from_the_option(opt):
    field, action = fairseq_fields()[opt.name], vision_actions()[opt.name]
    # the vision trainer keeps the paper's ImageNet alpha (1, constant), and says so
    assert field.default == opt.default
    assert action.default == IMAGENET_ALPHA.get(opt.name, opt.default)
    if opt.name in IMAGENET_ALPHA:
        assert "here: " in action.help
    # A front end may add what the option means there, after the shared text.
    assert field.metadata["help"].startswith(opt.help)
    assert action.help.startswith(opt.help)
    if opt.choices:
        assert tuple(action.choices) == opt.choices
        assert set(field.type.__members__) == set(opt.choices)  # fairseq's ChoiceEnum


def test_defaults_namespace_feeds_the_builders(tmp_path):
    cfg = opts.defaults(codistill_dir=str(tmp_path), codistill_id=1)
    exchange = opts.exchange_config(cfg)
    assert (exchange.root, exchange.model_id, exchange.interval) == (str(tmp_path), 1, opts.INTERVAL.default)
    exchange.validate()
    assert opts.alpha_schedule(cfg)(epoch=1) == opts.ALPHA.default
    with pytest.raises(TypeError, match="codistill_alhpa"):
        opts.defaults(codistill_alhpa=2.0)


@pytest.mark.parametrize("change, message", [
    ({"codistill_temperature": 0.0}, "--codistill-temperature must be > 0"),
    ({"codistill_temperature": 2.0}, "only applies to --codistill-loss kl"),
    ({"codistill_id": -1}, "--codistill-id is required"),
])
def test_bad_values_name_the_flag(change, message, tmp_path):
    cfg = opts.defaults(**{"codistill_dir": str(tmp_path), "codistill_id": 0, **change})
    with pytest.raises(ValueError, match=message):
        opts.check_penalty(cfg)
        opts.exchange_config(cfg)


def test_kl_takes_a_temperature():
    opts.check_penalty(opts.defaults(codistill_loss="kl", codistill_temperature=2.0))


@pytest.mark.e2e
def test_fairseq_train_help_lists_the_peer_dtype():
    proc = run([tool("fairseq-train"), "--user-dir", opts.__file__.rsplit("/", 1)[0],
                "--task", "codistill_translation", "--criterion", "codistill_ce", "--help"],
               timeout=120)
    assert "--codistill-peer-dtype" in proc.stdout and "{auto,same,bf16,fp16}" in proc.stdout


@pytest.mark.parametrize("method, momentum, max_update, warned", [
    ("diloco", 0.9, 1200, True),  # 12 outer steps of 100: the setting that failed
    ("diloco", 0.9, 100 * 100, False),  # 100 outer steps
    ("diloco", 0.5, 1200, False),  # the default
    ("diloco", 0.9, 0, False),  # no --max-update: the length is unknown
    ("localsgd", 0.9, 1200, False),
])
def test_diloco_momentum_over_few_outer_steps_is_warned_about(method, momentum, max_update,
                                                              warned, caplog):
    from fairseq_codistill.fairseq_plugin.task import warn_few_outer_steps

    cfg = opts.defaults(codistill_method=method, codistill_outer_momentum=momentum,
                        codistill_interval=100)
    warn_few_outer_steps(cfg, max_update)
    assert ("--codistill-outer-momentum 0.9 over 12 outer steps" in caplog.text) == warned


def test_the_async_switch_parses_in_both_front_ends():
    assert opts.ASYNC.default is False
    assert build_parser().parse_args(["--codistill-async"]).codistill_async is True
    assert build_parser().parse_args([]).codistill_async is False
    assert fairseq_fields()["codistill_async"].type is bool  # fairseq: store_true
