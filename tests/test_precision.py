"""``seer train``'s precision when neither ``--bf16`` nor ``--no-bf16`` is given: bf16 autocast
where the hardware computes bfloat16 natively, float32 elsewhere; the flags always win."""

from __future__ import annotations

import logging

import pytest
from test_train import _trainer_on_tiny

from seer.core import precision
from seer.core.precision import choose_bf16, native_bf16  # the real ones (conftest pins them)
from seer.training.config import TrainConfig

SAPPHIRE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd atomics\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(SAPPHIRE, True), (SKYLAKE, False), (GRAVITON3, True), (GRAVITON2, False), ("", False)],
)
def test_native_bf16_reads_the_cpu_flags(cpuinfo, native):
    why = native_bf16(cuda=False, cpuinfo=cpuinfo)
    assert (why is not None) == native
    if native:
        assert "bf16" in why  # the log names the flag it found


def test_a_flag_wins_over_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda cuda, cpuinfo=None: "flag")
    assert choose_bf16(None, fp16=False, cuda=False) is True
    assert choose_bf16(False, fp16=False, cuda=False) is False  # --no-bf16
    assert choose_bf16(None, fp16=True, cuda=True) is False  # --fp16 chose another precision
    monkeypatch.setattr(precision, "native_bf16", lambda cuda, cpuinfo=None: None)
    assert choose_bf16(None, fp16=False, cuda=False) is False
    assert choose_bf16(True, fp16=False, cuda=False) is True  # --bf16 forces it


def test_unset_precision_reaches_the_trainer_by_the_hardware(
    tmp_path, tokenizer, concept_file, retain_file, monkeypatch, caplog
):
    assert TrainConfig().bf16 is None  # the default is the hardware's choice
    monkeypatch.setattr(precision, "native_bf16", lambda cuda, cpuinfo=None: "this CPU has x")
    with caplog.at_level(logging.INFO, logger="seer.core.precision"):
        native = _trainer_on_tiny(tmp_path / "a", tokenizer, concept_file, retain_file)
    assert native.args.bf16 and "bf16 autocast, since this CPU has x" in caplog.text
    off = _trainer_on_tiny(tmp_path / "b", tokenizer, concept_file, retain_file, bf16=False)
    assert not off.args.bf16
    monkeypatch.setattr(precision, "native_bf16", lambda cuda, cpuinfo=None: None)
    assert not _trainer_on_tiny(tmp_path / "c", tokenizer, concept_file, retain_file).args.bf16


@pytest.mark.parametrize(("argv", "bf16"), [([], None), (["--bf16"], True), (["--no-bf16"], False)])
def test_the_train_command_leaves_precision_unset_unless_a_flag_is_given(argv, bf16):
    import argparse

    from seer.commands.options import add_arguments, from_namespace

    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    assert from_namespace(TrainConfig, parser.parse_args(argv)).bf16 is bf16
    (action,) = [a for a in parser._actions if a.dest == "bf16"]
    assert "(default: unset)" in action.help
