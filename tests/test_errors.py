"""Bad input fails with one line that says what is wrong and how to fix it, exit status 2,
no traceback, and nothing written. CLI tests use errors raised before a model loads."""

import importlib
import importlib.util
import json
import logging
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import RUN_META, tiny_llama, write_concepts, write_retain
from safetensors.torch import save_file

from seer import cli
from seer.core.data import load_concepts
from seer.core.folders import PARTIAL_MARK
from seer.core.formatting import encode, warn_truncated
from seer.core.models import load_model
from seer.core.run import FORMAT_VERSION
from seer.errors import SeerError
from seer.training.config import TrainConfig
from seer.training.train import train


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the input was checked")


@pytest.fixture
def seer_train(tmp_path, monkeypatch):
    """``seer train --data DATA --output tmp/run ARGS``: returns (status, stderr)."""
    monkeypatch.setattr(importlib.import_module("seer.training.train"), "load_model", _no_model)

    def run(data, *argv, capsys):
        status = cli.main(
            ["--quiet", "train", "--data", str(data), "--output", str(tmp_path / "run"), *argv]
        )
        return status, capsys.readouterr().err

    return run


def assert_failed(tmp_path, status, err, *fragments):
    assert status == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("seer: error: "), err
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def _jsonl(*rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


GOOD = [{"prompt": f"text {i}", "concept": "ab"[i % 2]} for i in range(12)]

BAD_DATA = {
    "missing": (None, "missing.csv", ["does not exist", "--data"]),
    "empty": ("", "d.csv", ["is empty"]),
    "header only": ("prompt,concept\n", "d.csv", ["has no data rows"]),
    "no concept column": (
        "prompt,label\nhi,a\nho,b\n",
        "d.csv",
        ["no concept column 'concept'", "['label', 'prompt']", "--concept-column"],
    ),
    "no prompt column": (
        _jsonl({"text": "hi", "concept": "a"}, {"text": "ho", "concept": "b"}),
        "d.jsonl",
        ["no prompt column 'prompt'", "['concept', 'text']", "--prompt-column"],
    ),
    "too few of a concept": (
        _jsonl(*GOOD, {"prompt": "x", "concept": "rare"}, {"prompt": "y", "concept": "rare"}),
        "d.jsonl",
        ["concept 'rare' has 2 example(s)", "at least 4"],
    ),
    "one concept": (
        _jsonl(*[{"prompt": f"t{i}", "concept": "a"} for i in range(6)]),
        "d.jsonl",
        ["only one concept ('a')"],
    ),
    "only blank texts": ("prompt,concept\n  ,a\n\t,b\n,c\n", "d.csv", ["none of its 3 rows"]),
    "not utf-8": (
        b"prompt,concept\nhello,a\ncaf\xe9,b\n",
        "d.csv",
        ["line 3", "not UTF-8", "iconv"],
    ),
    "bad json line": (
        _jsonl(GOOD[0]) + '{"prompt": "x", concept}\n',
        "d.jsonl",
        ["line 2: not valid JSON"],
    ),
    "json array line": (
        _jsonl(GOOD[0]) + "[1, 2]\n",
        "d.jsonl",
        ["line 2: expected a JSON object"],
    ),
    "a folder": (None, "folder.csv", ["is a folder"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_fails_before_the_model_loads(tmp_path, seer_train, capsys, case):
    content, name, fragments = BAD_DATA[case]
    path = tmp_path / name
    if case == "a folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    status, err = seer_train(path, capsys=capsys)
    assert_failed(tmp_path, status, err, *fragments)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--learning-rate=-1e-4"], "--learning-rate must be > 0"),
        (["--learning-rate", "nan"], "--learning-rate must be > 0"),
        (["--temperature", "0"], "--temperature must be between 0.001 and 100"),
        (["--test-fraction", "1"], "--test-fraction must be between 0 and 1"),
        (["--max-per-concept", "1"], "--max-per-concept must be at least 2"),
        (["--layer", "-1"], "--layer must be >= 0"),
    ],
)
def test_bad_options(tmp_path, seer_train, capsys, argv, fragment):
    data = write_concepts(tmp_path / "d.jsonl")
    assert_failed(tmp_path, *seer_train(data, *argv, capsys=capsys), fragment)


def test_existing_output_is_refused_and_kept(tmp_path, seer_train, capsys):
    data = write_concepts(tmp_path / "d.jsonl")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "seer.json").write_text("{}")
    status, err = seer_train(data, capsys=capsys)
    assert status == 2 and "already exists" in err and "--overwrite" in err
    (tmp_path / "run" / "seer.json").unlink()
    (tmp_path / "run" / "mine.txt").write_text("keep me")  # not a run: even --overwrite refuses
    status, err = seer_train(data, "--overwrite", capsys=capsys)
    assert status == 2 and "not a seer run folder" in err
    assert (tmp_path / "run" / "mine.txt").read_text() == "keep me"
    (tmp_path / "run" / "mine.txt").unlink()
    (tmp_path / "run").rmdir()
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / PARTIAL_MARK).write_text("{}")  # seer's own
    status, err = seer_train(data, capsys=capsys)
    assert status == 2 and "interrupted run" in err and "--resume" in err


def test_resume_with_other_options_is_refused(tmp_path, seer_train, capsys):
    data = write_concepts(tmp_path / "d.jsonl")
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / PARTIAL_MARK).write_text("{}")  # seer's own
    config = TrainConfig(data=str(data), output=str(tmp_path / "run"), batch_size=8).to_dict()
    (tmp_path / "run.partial" / "config.json").write_text(json.dumps(config))
    status, err = seer_train(data, "--resume", "--batch-size", "4", capsys=capsys)
    assert status == 2 and "batch_size=8 (now 4)" in err and "--overwrite" in err
    assert (tmp_path / "run.partial" / "config.json").is_file()


def test_unknown_model_offline(tmp_path, capsys):
    data = write_concepts(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    argv = ["--quiet", "train", "--data", str(data), "--output", str(out)]
    assert cli.main([*argv, "--model", "no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "local path" in err and "Traceback" not in err
    assert cli.main([*argv, "--model", str(tmp_path / "no" / "such")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "run.partial").exists()
    with pytest.raises(SeerError, match="offline"):
        load_model("no-such-org/no-such-model")


def test_layer_out_of_range_writes_nothing(tmp_path, tokenizer):
    config = TrainConfig(
        model="tiny",
        data=str(write_concepts(tmp_path / "d.jsonl")),
        retain_data=str(write_retain(tmp_path / "r.jsonl")),
        output=str(tmp_path / "run"),
        layer=9,
        test_fraction=0.34,
    )
    with pytest.raises(SeerError, match=r"--layer 9 is out of range: this model has blocks 0\.\.3"):
        train(config, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def _fake_run(path, **meta):
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text("{}")  # present; never loaded here
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    (path / "seer.json").write_text(json.dumps({**RUN_META, **meta}))
    save_file({"prototypes": torch.zeros(2, 32)}, str(path / "prototypes.safetensors"))
    return path


def test_run_folder_errors(tmp_path, capsys, monkeypatch, tokenizer):
    newer = _fake_run(tmp_path / "newer", format_version=FORMAT_VERSION + 1)
    for argv in (["evaluate", str(newer)], ["explain", str(newer), "--prompt", "hi"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "written by a newer seer" in err and "pip install -U seer" in err
    monkeypatch.setattr(
        "seer.core.models.load_model", lambda *a, **k: (tiny_llama(len(tokenizer)), tokenizer)
    )
    other = _fake_run(tmp_path / "other")  # its base model's fingerprint is not the tiny one's
    assert cli.main(["explain", str(other), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "trained on 'tiny' (fingerprint 0000000000000000)" in err and "load that one" in err
    (other / "seer.json").write_text("{not json")
    assert cli.main(["evaluate", str(other)]) == 2
    assert "is corrupt" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "not a seer run folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--data", "missing.csv"], "data file missing.csv does not exist"),
        (["train", "--batch-size", "0"], "--batch-size must be a positive integer"),
    ],
)
def test_cli_process_exits_2_without_traceback(tmp_path, argv, fragment):
    proc = subprocess.run(
        [sys.executable, "-m", "seer.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"seer: error: {fragment}")
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_blank_rows_are_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "d.csv"
    path.write_text("prompt,concept\na b,x\n  ,x\nc d,y\n\t,y\ne f,y\n,\n")
    with caplog.at_level(logging.WARNING):
        examples = load_concepts(str(path))
    assert len(examples) == 3
    assert "skipped 3 of 6 rows whose concept or text is empty or whitespace" in caplog.text


def test_labels_differing_by_case_warn(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    path.write_text(
        _jsonl(
            *[{"prompt": f"t{i}", "concept": c} for i, c in enumerate(["Space", "space", "food"])]
        )
    )
    with caplog.at_level(logging.WARNING):
        load_concepts(str(path))
    assert "['Space', 'space'] differ only by case or whitespace" in caplog.text


def test_long_texts_are_truncated_and_counted(tokenizer, caplog):
    rows = [
        {"prompt": "how do I bake bread " * 40, "response": "sure " * 40},
        {"prompt": "hi", "response": None},
        {"prompt": "word " * 100, "response": None},
    ]
    with caplog.at_level(logging.WARNING):
        assert warn_truncated(tokenizer, rows, 32, "training texts") == 2
    assert "2 of 3 training texts are longer than --max-length 32 tokens" in caplog.text
    for row in rows:
        assert len(encode(tokenizer, row["prompt"], row["response"], "full", 32).input_ids) <= 32


def test_a_response_without_prompt_encodes_in_every_mode(tokenizer):
    alone = encode(tokenizer, "just a reply", None, "prompt")
    for mode in ("full", "prompt", "response"):
        assert encode(tokenizer, None, "just a reply", mode) == alone


def test_json_array_and_offline_hub_name(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(GOOD))
    assert len(load_concepts(str(tmp_path / "d.json"))) == 12
    with pytest.raises(SeerError, match="local cache"):
        load_concepts("no_such_dataset_xyz")


def _seer(argv, cwd, **kw):
    return subprocess.run(
        [sys.executable, "-m", "seer", *argv], cwd=cwd, capture_output=True, timeout=900, **kw
    )


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.strip().splitlines() if x.startswith("seer: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_invalid_utf8_in_an_argument_is_one_line(tmp_path):
    run = _fake_run(tmp_path / "run")
    proc = _seer([b"explain", str(run).encode(), b"--prompt", b"caf\xe9"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr.decode())
    assert line.startswith("seer: error: --prompt") and "not valid UTF-8" in line, line


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"prompt": "hi \\ud800"}', "line 2: 'prompt' holds a lone surrogate"),
        ('{"prompt": "hi", "response": 3}', "entry 2: 'response' must be a string"),
    ],
)
def test_bad_file_lines_are_named(tmp_path, capsys, line, fragment):
    run = _fake_run(tmp_path / "run")
    file = tmp_path / "p.jsonl"
    file.write_text('{"prompt": "fine"}\n' + line + "\n")
    assert cli.main(["explain", str(run), "--file", str(file)]) == 2
    err = capsys.readouterr().err
    assert fragment in _one_line(err), err


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "seer", "train", "--data", "x.csv"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # still importing torch and transformers
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert _one_line(err).startswith("seer: interrupted"), err


def test_supcon_needs_a_batch_of_two(tmp_path, seer_train, capsys):
    data = write_concepts(tmp_path / "d.jsonl")
    status, err = seer_train(data, "--objective", "supcon", "--batch-size", "1", capsys=capsys)
    assert_failed(tmp_path, status, err, "--objective supcon needs --batch-size >= 2")


def test_nan_and_none_cells_are_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"t{i}", "concept": "ab"[i % 2]} for i in range(6)]
    rows += [{"prompt": "x", "concept": None}, {"prompt": None, "concept": "a"}]
    path.write_text(_jsonl(*rows) + '{"prompt": "y", "concept": NaN}\n')
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,concept\na,x\nb,y\nc,NaN\nNaN,x\nd,None\n")
    with caplog.at_level(logging.WARNING):
        assert {e["concept"] for e in load_concepts(str(path))} == {"a", "b"}
        assert {e["concept"] for e in load_concepts(str(csv))} == {"x", "y"}
    assert "skipped 3 of 9 rows" in caplog.text and "skipped 3 of 5 rows" in caplog.text


def test_max_length_above_the_context_is_clamped(tmp_path, tokenizer, caplog):
    config = TrainConfig(
        model="tiny",
        data=str(write_concepts(tmp_path / "d.jsonl")),
        retain_data=str(write_retain(tmp_path / "r.jsonl")),
        output=str(tmp_path / "run"),
        layer=1,
        epochs=1,
        batch_size=4,
        test_fraction=0.34,
        max_length=100_000,
    )
    model = tiny_llama(len(tokenizer))  # max_position_embeddings 256
    with caplog.at_level(logging.WARNING):
        out = train(config, model=model, tokenizer=tokenizer, progress=False)
    assert "--max-length 100000 is above the model's context of 256 tokens" in caplog.text
    assert json.loads((out / "seer.json").read_text())["config"]["max_length"] == 256


def test_a_missing_optional_package_is_a_seer_error(monkeypatch):
    """The harm judge's weights package absent: one line naming what to install (and still a
    ModuleNotFoundError for library callers)."""
    from seer.safety import embedder

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == embedder.MINILM_PACKAGE else real(name, *a),
    )
    with pytest.raises(SeerError, match="pip install") as info:
        embedder.minilm_dir()
    assert isinstance(info.value, ModuleNotFoundError)
