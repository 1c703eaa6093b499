"""A damaged run folder is named, never silently used (issue 40, item 9): every command that
loads a run (explain, evaluate, export, serve) refuses one whose files do not hold what
training wrote, with one `seer: error:` line naming the damaged file, and writes nothing."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import refused, train_argv_of, write_concepts, write_retain
from safetensors.torch import load_file, save_file

from seer import cli
from seer.core.run import read_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model_dir) -> Path:
    """A tiny run trained through the `seer` command on a tiny random Llama folder."""
    root = tmp_path_factory.mktemp("damaged")
    data = write_concepts(root / "concepts.jsonl")
    argv = train_argv_of(model_dir, data, write_retain(root / "retain.jsonl"), root / "run")
    assert cli.main(argv) == 0
    return root / "run"


def _edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        meta = json.loads((run / "seer.json").read_text())
        edit(meta)
        # allow_nan: json writes NaN/Infinity tokens, which json.loads reads back
        (run / "seer.json").write_text(json.dumps(meta, allow_nan=True))

    return damage


def _edit_prototypes(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        tensors = load_file(str(run / "prototypes.safetensors"))
        edit(tensors)
        save_file(tensors, str(run / "prototypes.safetensors"))

    return damage


def _random_adapter_bytes(run: Path) -> None:
    """The weights file's header kept, every weight byte replaced by noise: it still loads."""
    import random

    file = run / "adapter" / "adapter_model.safetensors"
    data = bytearray(file.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(0)
    data[start:] = bytes(rng.getrandbits(8) for _ in range(len(data) - start))
    file.write_bytes(bytes(data))


def _wider(tensors: dict) -> None:
    p = tensors["prototypes"]
    tensors["prototypes"] = p.repeat(1, 2).contiguous()  # [K, 2D] for one position


def _set_calibration(key: str, value: object) -> Callable[[Path], None]:
    return _edit_meta(lambda m: m["calibration"].__setitem__(key, value))


# name: (damage, the file the message names, a fragment of the message)
DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "calibration temperature 0": (_set_calibration("temperature", 0.0), "seer.json", "temperature"),
    "calibration temperature -1": (
        _set_calibration("temperature", -1.0),
        "seer.json",
        "temperature",
    ),
    "calibration temperature NaN": (
        _set_calibration("temperature", math.nan),
        "seer.json",
        "temperature",
    ),
    "calibration threshold a string": (
        _set_calibration("threshold", "high"),
        "seer.json",
        "threshold",
    ),
    "calibration missing": (_edit_meta(lambda m: m.pop("calibration")), "seer.json", "calibration"),
    "positions bogus": (
        _edit_meta(lambda m: m.__setitem__("positions", ["bogus"])),
        "seer.json",
        "positions",
    ),
    "concept named twice": (
        _edit_meta(lambda m: m.__setitem__("concepts", ["cooking", "space", "space"])),
        "seer.json",
        "'space'",
    ),
    "NaN prototypes": (
        _edit_prototypes(lambda t: t["prototypes"].__setitem__((0, 0), math.nan)),
        "prototypes.safetensors",
        "not finite",
    ),
    "prototypes of the wrong width": (
        _edit_prototypes(_wider),
        "prototypes.safetensors",
        "wide",
    ),
    "random adapter bytes": (_random_adapter_bytes, "adapter_model.safetensors", "not finite"),
}


def _damaged(run_dir: Path, tmp_path: Path, case: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    DAMAGE[case][0](run)
    return run


@pytest.fixture
def no_serving(monkeypatch):
    """`seer serve` stops where it would start listening: a damaged run must not get there."""
    import uvicorn

    def serve(*args, **kwargs):
        raise AssertionError("seer serve started on a damaged run folder")

    monkeypatch.setattr(uvicorn, "run", serve)


@pytest.mark.parametrize("command", ["explain", "evaluate", "export", "serve"])
@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_folder_is_named(run_dir, tmp_path, capsys, no_serving, case, command):
    run = _damaged(run_dir, tmp_path, case)
    _, file, fragment = DAMAGE[case]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    argv = {
        "explain": ["explain", str(run), "--prompt", "how far is the moon", "--json"],
        "evaluate": ["evaluate", str(run), "--no-figures", "--no-sweep"],
        "export": ["export", str(run), str(tmp_path / "out")],
        "serve": ["serve", str(run)],
    }[command]
    line = refused(argv, capsys, file, fragment, "train the run again")
    assert "damaged" in line or "corrupt" in line or "not finite" in line, line
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("split", ["test", "train"])
def test_evaluate_names_an_empty_split(run_dir, tmp_path, capsys, split):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "split" / f"{split}.jsonl").write_text("")
    refused(["evaluate", str(run), "--no-figures"], capsys, f"{split}.jsonl", "no rows")
    assert not (run / "eval").exists()


def test_evaluate_names_a_split_row_of_an_unknown_concept(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    rows = (run / "split" / "test.jsonl").read_text().splitlines()
    rows[0] = json.dumps({**json.loads(rows[0]), "concept": "weather"})
    (run / "split" / "test.jsonl").write_text("\n".join(rows) + "\n")
    refused(["evaluate", str(run), "--no-figures"], capsys, "test.jsonl, row 1", "'weather'")


def test_the_run_training_wrote_passes_every_check(run_dir, capsys):
    """The checks accept what training writes: explain gives finite probabilities."""
    run = read_run(run_dir)
    assert 0 < run.calibration["temperature"] < math.inf
    assert cli.main(["explain", str(run_dir), "--prompt", "how far is the moon", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(math.isfinite(r["probability"]) for r in out["ranking"])


def test_an_exported_run_is_checked_like_a_run(run_dir, tmp_path, capsys):
    """An export carries seer.json and the prototypes; loading it checks them the same way."""
    out = tmp_path / "export"
    assert cli.main(["export", str(run_dir), str(out)]) == 0
    DAMAGE["calibration temperature 0"][0](out)
    refused(["explain", str(out), "--prompt", "hi"], capsys, "seer.json", "temperature")
