"""Read spans: one token taken exactly, a span averaged, the running mean of a trace."""

import torch

from seer.core.represent import pick_positions, running_means


def test_a_span_is_the_mean_of_its_tokens_and_one_token_is_exact():
    hidden = torch.randn(2, 7, 5, requires_grad=True)
    positions = torch.tensor([[3, 6], [2, 4]])
    starts = torch.tensor([[3, 1], [2, 0]])
    picked = pick_positions(hidden, positions, starts)
    assert torch.equal(picked[:, 0], hidden[[0, 1], [3, 2]].detach())
    torch.testing.assert_close(picked[0, 1], hidden[0, 1:7].mean(0))
    torch.testing.assert_close(picked[1, 1], hidden[1, 0:5].mean(0))
    assert torch.equal(
        pick_positions(hidden, positions), hidden.gather(1, positions[..., None].expand(-1, -1, 5))
    )
    picked[:, 1].sum().backward()  # every token of a span gets 1/len of the gradient
    assert torch.allclose(hidden.grad[0, 1:7], torch.full((6, 5), 1 / 6))
    assert hidden.grad[0, 0].abs().sum() == 0 and hidden.grad[1, 5:].abs().sum() == 0


def test_running_means_are_the_mean_span_read_after_each_token():
    hidden = torch.randn(6, 4)
    out = running_means(hidden, 2)
    assert torch.equal(out[:2], hidden[:2])
    for t in range(2, 6):
        torch.testing.assert_close(out[t], hidden[2 : t + 1].mean(0))
