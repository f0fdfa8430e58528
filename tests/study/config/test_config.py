"""The config contract: strict keys, typed overrides, validation at the door, dotted names."""

from __future__ import annotations

import dataclasses

import pytest

from study.config.load import DEFAULT_CONFIG, apply_overrides, dump_config, from_dict, load_config, replace
from study.config.schema import ConfigError, PipelineConfig, flatten


def test_default_config_loads_and_round_trips(tmp_path):
    cfg = load_config()
    assert cfg.data.name == "cluttered_digits" and cfg.detect.data == "cluttered_digits" and DEFAULT_CONFIG.is_file()
    assert cfg.data.synthetic_sizes[2] >= 5000 and cfg.retrain.methods == ("none", "cutmix")
    path = tmp_path / "c.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg


def test_keys_later_stages_rely_on_exist():
    flat = flatten(load_config())
    for key in ("data.name", "data.root", "model.arch", "cutmix.method", "cutmix.alpha", "cutmix.prob", "cutmix.mode",
                "train.epochs", "train.batch_size", "train.lr", "train.weight_decay", "train.seed"):
        assert key in flat, key


@pytest.mark.parametrize(("override", "needle"), [
    ("cutmix.alpha=-1", "cutmix.alpha=-1.0 is not allowed (alpha > 0)"),
    ("cutmix.prob=1.5", "0 <= prob <= 1"),
    ("cutmix.mode=pixel", "one of: batch, sample"),
    ("cutmix.method=fmix", "one of: cutmix, mixup, cutout, none"),
    ("model.arch=nope", "model.arch='nope' is not allowed (one of: "),
    ("no.such.key=1", "unknown config key no.such.key"),
    ("train.epochs=abc", "train.epochs: expected an integer, got 'abc'"),
    ("train.epochs=0", "train.epochs=0 is not allowed"),
    ("data.name=mnist", "one of: digits, cluttered_digits, synthetic, shapes, cifar10, cifar100, imagefolder"),
    ("train.lr", "expected key=value"),
    ("search.algorithm=bayes", "one of: tpe, qmc, random, grid"),
    ("cutmix.alpha.x=1", "has no sub-keys"),
])
def test_bad_overrides_name_the_value_and_what_is_allowed(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["cutmix.alpha=0.25", "train.epochs=3", "data.hflip=true", "train.milestones=[0.3, 0.6]",
                             "search.space.model.arch={type: choice, values: [cnn, resnet20]}"])
    assert cfg.cutmix.alpha == 0.25 and isinstance(cfg.cutmix.alpha, float)
    assert cfg.train.epochs == 3 and cfg.data.hflip is True and cfg.train.milestones == (0.3, 0.6)
    assert cfg.search.space["model.arch"].values == ("cnn", "resnet20")
    assert dataclasses.is_dataclass(cfg) and isinstance(cfg, PipelineConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 5  # type: ignore[misc]


def test_space_can_be_cleared_then_rebuilt_from_the_command_line():
    cfg = load_config(None, ["search.space={}", "search.space.cutmix.alpha={type: choice, values: [0.5, 2.0]}"])
    assert list(cfg.search.space) == ["cutmix.alpha"] and cfg.search.space["cutmix.alpha"].values == (0.5, 2.0)


def test_unknown_yaml_key_is_an_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("cutmix:\n  alpah: 1.0\n")
    with pytest.raises(ConfigError, match="unknown config key cutmix.alpah"):
        load_config(p)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("cutmix: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


@pytest.mark.parametrize(("content", "needle"), [
    (b"\x00\xff", "is not UTF-8 text (byte 1"),  # the reproduction: \xff never occurs in UTF-8
    (b"cutmix:\n  alpha: 1.0 # caf\xe9\n", "is not UTF-8 text (byte 26"),  # Latin-1 text
    (b"\x00\x01", "is not valid YAML"),  # valid UTF-8, but control characters YAML does not accept
])
def test_a_file_that_is_not_yaml_text_is_a_one_line_error(tmp_path, capsys, content, needle):
    from tests.helpers.cli import assert_one_line_error, run_main

    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert needle in str(info.value) and str(p) in str(info.value) and "\n" not in str(info.value)
    code, _, err = run_main(capsys, "train", "--config", str(p), "--output", str(tmp_path / "out"))
    assert_one_line_error(code, err, needle, str(p))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("method", "prob", "mixes"), [
    ("cutmix", 0.5, True), ("mixup", 1.0, True), ("cutout", 0.001, True), ("cutmix", 0.0, False),
    ("none", 0.5, False), ("none", 0.0, False),
])
def test_mixes_is_method_not_none_and_p_above_zero(method, prob, mixes):
    cfg = load_config(None, [f"cutmix.method={method}", f"cutmix.prob={prob}"])
    assert cfg.cutmix.mixes is mixes
    assert "mixes" not in flatten(cfg) and "mixes" not in dump_config(cfg)  # a rule, not a config key


@pytest.mark.parametrize(("space", "needle"), [
    ({"cutmix.alpha": {"type": "uniform", "low": -1.0, "high": 2.0}}, "cutmix.alpha=-1.0 is not allowed"),
    ({"model.arch": {"type": "choice", "values": []}}, "search.space.model.arch.values is empty"),
    ({"model.arch": {"type": "choice", "values": ["cnn", "vgg"]}}, "model.arch='vgg' is not allowed"),
    ({"cutmix.alpha": {"type": "loguniform", "low": 0.0, "high": 2.0}}, "low > 0"),
    ({"cutmix.alpha": {"type": "uniform", "low": 2.0, "high": 1.0}}, "low < high"),
    ({"cutmix.alhpa": {"type": "uniform", "low": 1.0, "high": 2.0}}, "unknown parameter"),
    ({"cutmix.prob": {"type": "gaussian", "low": 0.0, "high": 1.0}}, "one of: uniform, loguniform, int, choice"),
])
def test_search_space_is_validated(space, needle):
    with pytest.raises(ConfigError, match=None) as info:
        from_dict({"search": {"space": space}})
    assert needle in str(info.value)


def test_replace_and_flatten_share_dotted_names():
    cfg = load_config()
    new = replace(cfg, {"cutmix.alpha": 0.5, "model.arch": "cnn"})
    assert new.cutmix.alpha == 0.5 and new.model.arch == "cnn" and cfg.cutmix.alpha == 1.0
    assert flatten(new)["cutmix.alpha"] == 0.5
    with pytest.raises(ConfigError):
        replace(cfg, {"cutmix.alpha": -2.0})
    with pytest.raises(ConfigError, match="unknown config key"):
        replace(cfg, {"cutmix.nope": 1})


def test_apply_overrides_does_not_mutate_input():
    data = {"cutmix": {"alpha": 1.0}}
    out = apply_overrides(data, ["cutmix.alpha=2"])
    assert data == {"cutmix": {"alpha": 1.0}} and out["cutmix"]["alpha"] == 2


def test_every_shipped_config_is_valid():
    from pathlib import Path

    configs = sorted((Path(DEFAULT_CONFIG).parent).glob("*.yaml"))
    assert {p.name for p in configs} >= {"digits.yaml", "cifar100_paper.yaml", "imagenet_resnet50.yaml"}
    for path in configs:
        cfg = load_config(path)
        assert cfg.search.space or path.name == "digits_budget.yaml", path  # the budget axis runs no study
    paper = load_config(DEFAULT_CONFIG.parent / "cifar100_paper.yaml")
    assert (paper.model.arch, paper.train.epochs, paper.train.batch_size, paper.train.lr) == ("pyramidnet200", 300, 64,
                                                                                             0.25)
