"""SIP losses against closed forms and a float64 reference on fresh random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_sip.loss import PrefixMode, dpo_loss, masked_nll, sip_loss


def test_equal_chosen_and_rejected_give_log2() -> None:
    logp = torch.randn(5, dtype=torch.float64)
    loss, margin = dpo_loss(logp, logp, logp * 0.3, logp * 0.3, beta=0.7)
    assert torch.allclose(loss, torch.full_like(loss, math.log(2.0)))
    assert torch.all(margin == 0)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down() -> None:
    chosen = torch.tensor([-5.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, rejected, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)
    loss.sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()
    assert chosen.grad.item() == pytest.approx(-0.05)  # -beta * sigmoid(0)


def _reference(mode, mask, ref, token_nll, objective, beta, nll_weight):
    """Straight-line float64 version of sip_loss, prefix by prefix."""
    num_prefixes, rows, seq = mask.shape
    nll = token_nll.double().view(num_prefixes, rows, seq)
    total, count = 0.0, 0
    for b in range(num_prefixes):
        logp = [-(nll[b, r] * mask[b, r]).sum().item() for r in range(rows)]
        mean_nll = -logp[0] / max(mask[b, 0].sum().item(), 1.0)
        if mode[b] == PrefixMode.PREFERENCE:
            if objective == "dpo":
                margin = beta * ((logp[0] - ref[b, 0].item()) - (logp[1] - ref[b, 1].item()))
                total += -math.log(1.0 / (1.0 + math.exp(-margin))) + nll_weight * mean_nll
            else:
                total += mean_nll
            count += 1
        elif mode[b] == PrefixMode.NLL_FALLBACK:
            total += mean_nll
            count += 1
    return total, count


@pytest.mark.parametrize("objective, rows", [("dpo", 2), ("rf_nll", 1)])
@pytest.mark.parametrize("num_prefixes, seq", [(1, 3), (3, 7), (5, 17)])
def test_sip_loss_matches_float64_reference(objective: str, rows: int, num_prefixes: int, seq: int) -> None:
    generator = torch.Generator().manual_seed(num_prefixes * 100 + seq)
    mode = torch.randint(0, 3, (num_prefixes,), generator=generator)
    mask = (torch.rand(num_prefixes, rows, seq, generator=generator) > 0.3).float()
    ref = -torch.rand(num_prefixes, rows, generator=generator) * 20
    token_nll = (torch.rand(num_prefixes * rows, seq, generator=generator) * 5).requires_grad_(True)
    loss, count, report = sip_loss(mode, mask, ref, token_nll, objective=objective, beta=0.3, nll_weight=0.25)
    expected, expected_count = _reference(mode, mask, ref, token_nll.detach(), objective, 0.3, 0.25)
    assert int(count) == expected_count
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert report["loss"].tolist() == pytest.approx([expected, expected_count], rel=1e-5, abs=1e-5)
    # Gradient against float64 autograd of the same formula.
    loss.backward()
    token_nll64 = token_nll.detach().double().requires_grad_(True)
    loss64, _, _ = sip_loss(mode, mask.double(), ref.double(), token_nll64, objective=objective, beta=0.3, nll_weight=0.25)
    loss64.backward()
    assert torch.allclose(token_nll.grad.double(), token_nll64.grad, atol=1e-6)
    # Skipped prefixes and masked positions get no gradient.
    grad = token_nll.grad.view(num_prefixes, rows, seq)
    assert torch.all(grad[mode == PrefixMode.SKIP] == 0)
    assert torch.all(grad[mask == 0] == 0)


def test_dpo_report_counts_pairs_and_accuracy() -> None:
    mode = torch.tensor([PrefixMode.PREFERENCE, PrefixMode.PREFERENCE, PrefixMode.SKIP])
    mask = torch.ones(3, 2, 2)
    # Row log-probs: prefix 0 prefers chosen (margin +1.8), prefix 1 prefers rejected (margin -1.0).
    token_nll = torch.tensor([[0.1, 0.1], [1.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    _, count, report = sip_loss(mode, mask, torch.zeros(3, 2), token_nll, objective="dpo", beta=1.0, nll_weight=0.0)
    assert int(count) == 2
    assert report["dpo_accuracy"].tolist() == [1.0, 2.0]
    assert report["dpo_margin"].tolist() == pytest.approx([(-0.2 + 2.0) + (-2.0 + 1.0), 2.0])


@pytest.mark.parametrize("policy_shift, sign", [(+0.5, +1), (-0.5, -1)])
def test_margin_is_positive_when_the_policy_moved_towards_the_chosen(policy_shift: float, sign: int) -> None:
    """margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected)): positive when the
    policy raised the chosen row relative to the reference more than the rejected row, and then
    the loss is below ln 2; negative (and above ln 2) the other way round."""
    ref_chosen, ref_rejected = torch.tensor([-4.0, -7.0]), torch.tensor([-6.0, -3.0])
    loss, margin = dpo_loss(ref_chosen + policy_shift, ref_rejected - policy_shift, ref_chosen, ref_rejected, beta=0.5)
    assert torch.all(torch.sign(margin) == sign)
    assert margin.tolist() == pytest.approx([0.5 * 2 * policy_shift] * 2)
    assert torch.all(torch.sign(math.log(2.0) - loss) == sign)


def test_masked_nll_sums_and_counts() -> None:
    nll = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, count, report = masked_nll(mask, nll)
    assert loss.item() == 9.0 and int(count) == 3
    assert report["nll"].tolist() == [9.0, 3.0]
