"""One source of truth for settings: every prepare/train flag's default, choices and help
come from the config dataclasses and registries, and validation uses the same choices."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ferkit.cli import build_parser
from ferkit.cli.train import TRAIN_FLAGS
from ferkit.data.prepare import PrepareConfig
from ferkit.settings import add_option, check_choices, choices_of, default_of, setting
from ferkit.training.config import TrainConfig


def subparser(command: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return subparsers.choices[command]


def actions(command: str) -> dict[str, argparse.Action]:
    return {action.dest: action for action in subparser(command)._actions}


def test_prepare_flags_are_the_config_fields():
    flags = actions("prepare")
    for field in dataclasses.fields(PrepareConfig):
        if field.name == "compress":  # the CLI's --no-compress
            assert flags["no_compress"].default is False
            continue
        action = flags[field.name]
        assert action.default == field.default, field.name
        expected = choices_of(PrepareConfig, field.name)
        assert (tuple(action.choices) if action.choices else None) == expected, field.name
        assert field.metadata["help"].split()[0] in action.help


def test_train_flags_default_to_the_config_file_and_show_the_real_default():
    flags = actions("train")
    for name in TRAIN_FLAGS:
        action = flags[name]
        assert action.default is None, name  # not given: --config's value, else the field's
        if not isinstance(default_of(TrainConfig, name), bool):
            assert (
                f"default: {default_of(TrainConfig, name)}"
                in action.help.replace("default: None", "default: none")
                or default_of(TrainConfig, name) is None
            )
        expected = choices_of(TrainConfig, name)
        assert (tuple(action.choices) if action.choices else None) == expected, name


def test_arch_choices_come_from_the_registry(monkeypatch):
    from ferkit.models import keras_nets

    monkeypatch.setitem(keras_nets.ARCHITECTURES, "my_net", lambda config: None)
    assert "my_net" in actions("train")["arch"].choices
    assert build_parser().parse_args(["train", "--out", "x", "--arch", "my_net"]).arch == "my_net"


def test_a_new_detector_is_one_change(monkeypatch):
    """A detector added to the registry is at once a valid setting and a CLI choice."""
    from ferkit import faces

    with pytest.raises(ValueError, match="detector must be one of"):
        PrepareConfig(detector="my_detector").validate()
    spec = faces.DetectorSpec(lambda: faces.HaarDetector(), faces.Framing(0.9))
    monkeypatch.setitem(faces.DETECTORS, "my_detector", spec)
    PrepareConfig(detector="my_detector").validate()
    assert "my_detector" in actions("prepare")["detector"].choices
    assert faces.make_detector("my_detector").framing == faces.Framing(0.9)


def test_check_choices_names_the_setting():
    with pytest.raises(ValueError, match=r"sampling must be one of \('shuffle', 'balanced'\)"):
        TrainConfig(sampling="uniform").validate()
    with pytest.raises(ValueError, match="ferplus_mode must be one of"):
        PrepareConfig(ferplus_mode="any").validate()
    TrainConfig().validate()
    PrepareConfig().validate()


def test_add_option_derives_type_default_and_help():
    @dataclasses.dataclass
    class Demo:
        rate: float = setting(0.5, "a rate")
        mode: str = setting("a", "a mode", choices=lambda: ("a", "b"))
        limit: int | None = setting(None, "a limit")
        flag: bool = setting(False, "a switch")

    parser = argparse.ArgumentParser()
    for name in ("rate", "mode", "limit", "flag"):
        add_option(parser, Demo, name)
    args = parser.parse_args(["--rate", "2", "--mode", "b", "--limit", "3", "--flag"])
    assert (args.rate, args.mode, args.limit, args.flag) == (2.0, "b", 3, True)
    assert parser.parse_args([]).rate == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    check_choices(Demo())
    with pytest.raises(ValueError, match="mode must be one of"):
        check_choices(Demo(mode="c"))
    help_text = parser.format_help()
    assert "a rate (default: 0.5)" in help_text and "a limit (default: none)" in help_text
