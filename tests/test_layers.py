import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from seer.core.architecture import get_layers
from seer.core.layers import (
    StopForward,
    add_to_layer,
    capture_final_states,
    capture_layers,
    run_until,
)

SMALL = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
)
CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL),
    "qwen2": lambda: Qwen2Config(**SMALL),
    "gemma": lambda: GemmaConfig(**SMALL, head_dim=8),
    "mistral": lambda: MistralConfig(**SMALL),
    "gpt2": lambda: GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2),
}


def hook_counts(model):
    return [len(block._forward_hooks) for block in get_layers(model)]


def build(name):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
    model(input_ids=torch.tensor([[1, 2]]), output_hidden_states=True)  # transformers' own hooks
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_capture_matches_output_hidden_states(name):
    model = build(name)
    assert len(get_layers(model)) == 3
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    before = hook_counts(model)
    with capture_layers(model, [0, 1, 2]) as hidden:
        out = model(input_ids=ids, output_hidden_states=True)
    for layer in (0, 1):  # the last entry of hidden_states has the final norm applied
        torch.testing.assert_close(hidden[layer], out.hidden_states[layer + 1])
    assert hook_counts(model) == before


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_layers_found_through_peft(name):
    model = build(name)
    target = ["q_proj", "v_proj"] if name == "llama" else ["c_attn"]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=target))
    assert get_layers(peft_model) is get_layers(model)


def test_override_and_helpful_errors():
    model = build("llama")
    assert len(get_layers(model, "model.layers")) == 3
    with pytest.raises(ValueError, match="does not name"):
        get_layers(model, "model.nope")
    with pytest.raises(ValueError, match="layers_path"):
        get_layers(torch.nn.Linear(2, 2))
    with (
        pytest.raises(ValueError, match=r"out of range: this model has layers 0\.\.2"),
        capture_layers(model, [3]),
    ):
        pass


def test_stop_after_cuts_the_pass_and_hooks_never_survive():
    model = build("llama")
    ids = torch.tensor([[1, 2, 3]])
    before = hook_counts(model)
    with capture_layers(model, [1], stop_after=True) as hidden:
        assert run_until(model, input_ids=ids) is None
        assert hidden[1].shape == (1, 3, 16)
        with pytest.raises(StopForward):
            model(input_ids=ids)
    with pytest.raises(RuntimeError), capture_layers(model, [0, 1]):
        raise RuntimeError("boom")
    assert hook_counts(model) == before


def test_add_to_layer_adds_exactly_the_vector():
    model = build("llama")
    ids = torch.tensor([[1, 2, 3]])
    vector = torch.randn(16)
    counts = hook_counts(model)
    with capture_layers(model, [1]) as plain:
        model(input_ids=ids)
    clean = plain[1].clone()
    with add_to_layer(model, 1, vector), capture_layers(model, [1]) as after:
        model(input_ids=ids)
    torch.testing.assert_close(after[1], clean + vector)
    assert hook_counts(model) == counts


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_capture_final_states_stops_before_the_head(name):
    """The LM head's input is the final hidden state after the final norm; the head never
    runs (no [tokens, vocab] logits), through a PEFT wrapper too."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        want = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=None, task_type="CAUSAL_LM"))
    calls = []
    handle = (
        peft.get_base_model()
        .get_output_embeddings()
        .register_forward_hook(lambda *a: calls.append(1))
    )
    with torch.no_grad(), capture_final_states(peft) as final:
        assert run_until(peft, input_ids=ids) is None
    handle.remove()
    assert calls == []
    torch.testing.assert_close(final["final"], want)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_architecture_reads_each_family_the_same_way(name):
    """What differs between families is answered in one module: the config's sizes under
    either naming, the linear layers LoRA can adapt (GPT-2's are Conv1D), forward arguments."""
    from seer.core.architecture import DEFAULT_TARGET_MODULES, accepts, config_value, linear_names

    model = build(name)
    assert config_value(model.config, "hidden_size") == 16
    assert config_value(model.config, "num_hidden_layers") == 3
    assert config_value(model.config, "num_attention_heads") == 2
    names = linear_names(model)
    if name == "gpt2":
        assert {"c_attn", "c_fc", "c_proj"} <= names and not names & set(DEFAULT_TARGET_MODULES)
    else:
        assert set(DEFAULT_TARGET_MODULES) <= names
    peft_model = get_peft_model(build(name), LoraConfig(r=2, target_modules=sorted(names)[:1]))
    assert accepts(peft_model, "attention_mask") and not accepts(peft_model, "no_such_argument")
