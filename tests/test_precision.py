"""``seer train``'s precision: float32 unless ``--bf16``, on every machine; the log says what the
hardware makes of the choice (bf16 emulated, or native and unused)."""

from __future__ import annotations

import logging

import pytest
from test_train import _trainer_on_tiny

from seer.core import precision
from seer.core.precision import choose_bf16, native_bf16
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


def test_the_flag_decides_and_the_log_says_what_the_hardware_makes_of_it(monkeypatch, caplog):
    monkeypatch.setattr(precision, "native_bf16", lambda cuda, cpuinfo=None: "this CPU has x")
    with caplog.at_level(logging.INFO, logger="seer.core.precision"):
        assert choose_bf16(False, fp16=False, cuda=False) is False
    assert "float32; this CPU has x, so --bf16 would run the step faster" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seer.core.precision"):
        assert choose_bf16(True, fp16=False, cuda=False) is True
    assert "bf16 autocast (this CPU has x)" in caplog.text
    monkeypatch.setattr(precision, "native_bf16", lambda cuda, cpuinfo=None: None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seer.core.precision"):
        assert choose_bf16(True, fp16=False, cuda=True) is True
    assert "--bf16 on this GPU, which does not compute bfloat16 natively" in caplog.text
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_float32_reaches_the_trainer_on_any_machine(
    tmp_path, tokenizer, concept_file, retain_file, monkeypatch
):
    assert TrainConfig().bf16 is False
    monkeypatch.setattr(precision, "native_bf16", lambda cuda, cpuinfo=None: "this CPU has x")
    assert not _trainer_on_tiny(tmp_path / "a", tokenizer, concept_file, retain_file).args.bf16
    mixed = _trainer_on_tiny(tmp_path / "b", tokenizer, concept_file, retain_file, bf16=True)
    assert mixed.args.bf16
