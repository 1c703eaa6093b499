import math

import pytest
import torch

from seer.core import losses


def test_info_nce_matches_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    # logits row 0: [1, 0.6]/tau, target 0; row 1: [0, 0.8]/tau, target 1
    l0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    l1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    assert losses.info_nce(z1, z2 * 3.0, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_supcon_matches_hand_computation():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    tau = 1.0
    # anchors 0 and 1: positive sim 1 vs negative 0; anchor 2 has no positive (skipped)
    expected = -math.log(math.e / (math.e + 1.0))
    assert losses.supcon(z, labels, tau).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_counts_every_same_concept_item_as_positive():
    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    sim = (z @ z.T) / 0.1
    sim.fill_diagonal_(float("-inf"))
    logp = sim - torch.logsumexp(sim, 1, keepdim=True)
    expected = -torch.stack([logp[0, 1], logp[1, 0], logp[2, 3], logp[3, 2]]).mean()
    assert losses.supcon(z, labels, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)


def test_retain_l2_masks_padding_on_both_sides():
    a = torch.zeros(1, 3, 2)
    r = torch.zeros(1, 3, 2)
    a[0, 0] = torch.tensor([3.0, 4.0])  # distance 5 at a real token
    a[0, 2] = torch.tensor([100.0, 0.0])  # padding: ignored
    mask = torch.tensor([[1, 1, 0]])
    assert losses.retain_l2([a, a], [r, r], mask).item() == pytest.approx(2.5)


def test_next_token_kl_is_zero_for_identical_and_matches_hand_value():
    logits = torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert losses.next_token_kl(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([[[math.log(0.5), math.log(0.5)]]])
    q = torch.tensor([[[math.log(0.9), math.log(0.1)]]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert losses.next_token_kl(p, q, torch.ones(1, 1)).item() == pytest.approx(expected, rel=1e-5)
    # masked positions must not count: garbage there changes nothing
    q2 = torch.cat([q, torch.tensor([[[9.0, -9.0]]])], dim=1)
    p2 = torch.cat([p, torch.tensor([[[-9.0, 9.0]]])], dim=1)
    assert losses.next_token_kl(p2, q2, torch.tensor([[1, 0]])).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_concept_cosines():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    same, diff = losses.concept_cosines(z, torch.tensor([0, 0, 1]))
    assert same == pytest.approx(1.0)
    assert diff == pytest.approx(0.0)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_kl_equals_the_whole_kl_with_its_gradients(softcap):
    torch.manual_seed(0)
    n, h, v = 37, 16, 50
    weight = torch.randn(v, h, requires_grad=True)
    bias = torch.randn(v, requires_grad=True)
    ref = torch.randn(n, h)
    hidden = (ref + 0.3 * torch.randn(n, h)).requires_grad_(True)

    def head(x):
        logits = x @ weight.T + bias
        return torch.tanh(logits / softcap) * softcap if softcap else logits

    whole = losses.next_token_kl(head(ref).detach(), head(hidden))
    expected = torch.autograd.grad(whole, [hidden, weight, bias])
    # 3 rows per chunk: 13 chunks, the last one short
    chunked = losses.chunked_next_token_kl(hidden, ref, weight, bias, softcap, chunk_elements=150)
    got = torch.autograd.grad(2.0 * chunked, [hidden, weight, bias])
    assert abs(chunked.item() - whole.item()) / whole.item() < 1e-5
    for a, b in zip(got, expected, strict=True):
        assert ((a - 2.0 * b).norm() / b.norm()).item() < 1e-5
    with torch.no_grad():  # no gradient wanted: the same value, nothing stored
        assert losses.chunked_next_token_kl(hidden, ref, weight).item() == pytest.approx(
            losses.next_token_kl(ref @ weight.T, hidden @ weight.T).item(), rel=1e-5
        )
