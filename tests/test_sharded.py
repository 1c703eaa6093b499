"""Training past one process: FSDP2 through `accelerate launch` (2 CPU processes, gloo), two
"machines" on one host (two torchrun node ranks over loopback), and DeepSpeed's refusal on CPUs.

Each process runs tests/sharded_worker.py; the single-process figures are computed here."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import make_tokenizer, tiny_llama, write_concepts, write_retain

from seer.core.run import last_checkpoint
from seer.errors import SeerError
from seer.training.config import TrainConfig
from seer.training.sharding import DEEPSPEED_ON_CPU, check_engine

TESTS = Path(__file__).parent
WORKER = TESTS / "sharded_worker.py"
FSDP_CPU = TESTS.parent / "examples" / "accelerate" / "fsdp_cpu.yaml"
sys.path.insert(0, str(TESTS))
from sharded_worker import PAIRS, step_trainer  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate(*args: str) -> list[str]:
    """`accelerate launch` with the FSDP config file a user would write for CPUs."""
    launch = ["-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU)]
    return [sys.executable, *launch, "--main_process_port", str(_port()), str(WORKER), *args]


def results(stdout: str) -> list[dict]:
    rows = [json.loads(x[7:]) for x in stdout.splitlines() if x.startswith("RESULT ")]
    return sorted(rows, key=lambda r: r["rank"])


def run(cmd: list[str], timeout: float = 600) -> list[dict]:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results(proc.stdout)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sharded")
    write_concepts(folder / "c.jsonl")
    write_retain(folder / "r.jsonl")
    return folder


def one_process(data: Path, tied: bool = False, micro: int | None = None) -> dict:
    """One process's loss parts on the same batches: each process's own (retain l2, KL) and
    both together (the contrastive loss, whose negatives are gathered across processes)."""
    trainer = step_trainer(data, f"one-{tied}-{micro}", tied=tied, micro=micro)
    ds = trainer.train_dataset
    out: dict = {}
    for name, rows_ in (("0", range(PAIRS)), ("1", range(PAIRS, 2 * PAIRS)), ("both", None)):
        picked = rows_ if rows_ is not None else range(2 * PAIRS)
        trainer._metrics.clear()
        trainer.training_step(trainer.model, trainer.data_collator([ds[i] for i in picked]))
        out[name] = {k: v[0] for k, v in trainer._metrics.items()}
    return out


@pytest.fixture(scope="module")
def single(data) -> dict:
    return one_process(data)


def assert_parts_equal(parts: list[dict], single: dict) -> None:
    assert [p["rank"] for p in parts] == [0, 1]
    for p in parts:
        mine = single[str(p["rank"])]
        # the reference passes ran with the adapter off: with a non-zero LoRA B, a reference
        # made with it on would equal the adapted pass, and both parts would be exactly 0
        assert p["retain_l2"] > 1e-3 and p["kl"] > 1e-4
        assert p["retain_l2"] == pytest.approx(mine["retain_l2"], rel=1e-4)
        assert p["kl"] == pytest.approx(mine["kl"], rel=1e-4)
        assert p["contrastive"] == pytest.approx(single["both"]["contrastive"], rel=1e-5)


def test_fsdp_first_step_equals_one_process(data, single):
    parts = run(accelerate("step", str(data)))
    assert all(p["sharded"] for p in parts)  # the model really was sharded
    assert_parts_equal(parts, single)


def test_fsdp_first_step_equals_one_process_with_a_tied_head(data):
    """The LM head sharing the embedding matrix (one shard group for both), whose weight the
    KL reads after the pass has freed the group."""
    parts = run(accelerate("step", str(data), "--tied"))
    assert all(p["sharded"] for p in parts)
    assert_parts_equal(parts, one_process(data, tied=True))


def test_fsdp_first_step_with_gradient_caching_equals_one_process(data):
    """``--micro-batch-size`` (gradient caching): passes without grad, then each micro-batch
    again with its own backward, the LM head gathered for each micro-batch's KL."""
    parts = run(accelerate("step", str(data), "--micro", "2"))
    assert all(p["sharded"] for p in parts)
    assert_parts_equal(parts, one_process(data, micro=2))


def test_two_machines_on_one_host_equal_one_process(data, single):
    """Two node ranks (one process each) meeting over the loopback rendezvous, as two machines
    would: `torchrun --nnodes 2 --node_rank N --rdzv_endpoint HOST:PORT`."""
    port = _port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *("-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"),
                *("--node_rank", str(rank), "--master_addr", "127.0.0.1"),
                *("--master_port", str(port), str(WORKER), "step", str(data)),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:] + outs[1][1][-3000:]
    parts = results(outs[0][0] + outs[1][0])
    assert not any(p["sharded"] for p in parts)  # plain DDP across the machines
    assert_parts_equal(parts, single)


@pytest.mark.parametrize("tied", [False, True], ids=["own LM head", "tied LM head"])
def test_a_cut_pass_leaves_no_weights_gathered(data, tied):
    """A pass cut after the target block (StopForward) ends inside the root module, past its
    FSDP post-forward: every shard group it gathered must still be freed when it ends. While it
    runs, an LM head of its own is never gathered (the pass never reaches it), nor the
    embedding matrix once looked up, unless the head shares it."""
    rows = run(accelerate("cut", str(data), *(["--tied"] if tied else [])))
    norm = "base_model.model.model.norm.weight"  # the root's own, a vector: never resharded
    for row in rows:
        assert row["after"] == [norm], row
        held = [n for n in row["at_cut"] if "embed_tokens" in n or "lm_head" in n]
        assert held == (["base_model.model.model.embed_tokens.weight"] if tied else []), row


@pytest.fixture(scope="module")
def fsdp_run(data) -> Path:
    """A whole FSDP run (4 epochs, a checkpoint every step, gradient checkpointing)."""
    rows = run(accelerate("train", str(data), "ref"))
    assert [r["base_change"] for r in rows] == [0.0, 0.0]  # each process's base shards unchanged
    assert all(r["shards"] > 0 for r in rows)
    return data / "ref"


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_fsdp_run_trains_the_adapter_and_loads_in_one_process(fsdp_run, tmp_path):
    from seer.inference.export import export

    meta = json.loads((fsdp_run / "seer.json").read_text())
    assert meta["train"]["steps"] == (4 * meta["train"]["examples"]) // (2 * PAIRS)
    weights = adapter(fsdp_run)
    assert any("lora_B" in k for k in weights)
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # B starts at 0
    # export merges the adapter trained under FSDP into the base weights, in one process
    tok = make_tokenizer()
    out = export(fsdp_run, tmp_path / "merged", model=tiny_llama(len(tok)), tokenizer=tok)
    from safetensors.torch import load_file

    merged = load_file(str(out / "model.safetensors"))
    base = tiny_llama(len(tok)).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], base[key])
    assert torch.equal(
        merged["model.layers.3.self_attn.q_proj.weight"], base[key.replace("0", "3")]
    )


def test_killed_fsdp_run_resumes_to_the_same_adapter(data, fsdp_run):
    output = str(data / "killed")
    proc = subprocess.Popen(
        accelerate("train", str(data), "killed", "--slow"),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while last_checkpoint(output) is None:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    # the launcher and its workers (which torchrun starts in sessions of their own)
    for child in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        child.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not Path(output).exists()
    run(accelerate("train", str(data), "killed", "--resume"))
    resumed, whole = adapter(Path(output)), adapter(fsdp_run)
    assert resumed.keys() == whole.keys()
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value)


def test_deepspeed_on_cpu_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what a DeepSpeed config sets
    with pytest.raises(SeerError) as err:
        check_engine()
    assert str(err.value) == DEEPSPEED_ON_CPU and "\n" not in DEEPSPEED_ON_CPU
    assert "GPU" in DEEPSPEED_ON_CPU and "fsdp_cpu.yaml" in DEEPSPEED_ON_CPU


def test_fsdp1_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(SeerError, match="^seer shards with FSDP2: set fsdp_version: 2"):
        check_engine()


def test_processes_of_one_machine_share_its_memory_budget(monkeypatch):
    from seer.training.build import _budget

    cfg = TrainConfig(model="tiny", data="x.jsonl", output="out")
    one, source_one = _budget(cfg, torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    two, source_two = _budget(cfg, torch.device("cpu"))
    assert two == pytest.approx(one / 2, rel=0.05)
    assert "shared by 2 processes" in source_two and "shared" not in source_one


@pytest.mark.parametrize("how", ["option", "config file"])
def test_zero3_is_refused_in_one_line(monkeypatch, tmp_path, how):
    from seer.training import sharding

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(sharding.torch.cuda, "is_available", lambda: True)  # past the CPU check
    if how == "option":
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    else:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    with pytest.raises(SeerError) as err:
        check_engine()
    assert str(err.value) == sharding.ZERO3 and "\n" not in sharding.ZERO3
    for stage in ("1", "2"):  # what the paper used, and ZeRO-2: not refused
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", stage)
        check_engine()
