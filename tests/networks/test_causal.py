"""The causal head computes the formulas its docstrings state."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mediad.data.records import ClinicalRecord
from mediad.networks.causal import (
    N_STRATA,
    BackDoorAdjustment,
    FrontDoorAdjustment,
    confounder_stratum,
    masked_attention,
)


@pytest.fixture
def front_door() -> FrontDoorAdjustment:
    torch.manual_seed(0)
    fd = FrontDoorAdjustment(d_model=8, n_prototypes=4)
    fd.prototypes.copy_(torch.randn(4, 8))
    fd.prior.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    return fd


def test_front_door_with_uninformative_query_is_the_prior_expectation(
        front_door: FrontDoorAdjustment) -> None:
    """W_q = 0: α = P(x'), so x̂ = W_v Σ_x' P(x') x' exactly."""
    torch.nn.init.zeros_(front_door.q.weight)
    m = torch.randn(3, 8)
    torch.testing.assert_close(front_door.weights(m), front_door.prior.expand(3, -1))
    expected = front_door.v(front_door.prior @ front_door.prototypes)
    torch.testing.assert_close(front_door(m), expected.expand(3, -1))


def test_front_door_weights_follow_the_formula(front_door: FrontDoorAdjustment) -> None:
    m = torch.randn(2, 8)
    q, k = front_door.q(m), front_door.k(front_door.prototypes)
    manual = front_door.prior * torch.exp(q @ k.T / math.sqrt(8))
    manual = manual / manual.sum(1, keepdim=True)  # α_k ∝ P(d_k) exp(q·k/√D)
    torch.testing.assert_close(front_door.weights(m), manual)
    torch.testing.assert_close(front_door(m), manual @ front_door.v(front_door.prototypes))


def test_nwgm_approximates_the_expected_prediction(front_door: FrontDoorAdjustment) -> None:
    """softmax(g(m, E[x'])) ≈ E_{x'}[softmax(g(m, x'))] when the classifier is near-linear."""
    g = torch.nn.Linear(16, 3)
    with torch.no_grad():
        g.weight.mul_(0.1)
    m = torch.randn(5, 8)
    alpha, values = front_door.weights(m), front_door.v(front_door.prototypes)
    exact = sum(alpha[:, k:k + 1] * F.softmax(g(torch.cat([m, values[k].expand(5, -1)], 1)), -1)
                for k in range(4))
    nwgm = F.softmax(g(torch.cat([m, front_door(m)], 1)), -1)
    assert (exact - nwgm).abs().max() < 0.01


def test_refresh_is_kmeans_with_frequencies() -> None:
    fd = FrontDoorAdjustment(d_model=2, n_prototypes=2)
    feats = torch.cat([torch.randn(30, 2) * 0.01 + 5, torch.randn(10, 2) * 0.01 - 5])
    fd.refresh(feats, seed=1)
    order = fd.prototypes[:, 0].argsort(descending=True)
    torch.testing.assert_close(fd.prototypes[order].round(), torch.tensor([[5.0, 5], [-5, -5]]))
    torch.testing.assert_close(fd.prior[order], torch.tensor([0.75, 0.25]))
    assert bool(fd.ready)


def test_back_door_is_the_stratified_average() -> None:
    torch.manual_seed(0)
    bd = BackDoorAdjustment(d_hidden=6, n_classes=3, n_strata=4)
    torch.nn.init.normal_(bd.embed.weight)
    bd.set_prior(torch.tensor([0, 0, 1, 2, 3, 3, 3]).numpy())
    h, stratum = torch.randn(2, 6), torch.tensor([1, 3])
    log_mix, observed = bd(h, stratum)
    manual = sum(bd.prior[c] * F.softmax(bd.out(h + bd.embed.weight[c]), -1) for c in range(4))
    torch.testing.assert_close(log_mix.exp(), manual)  # Σ_c P(Y|X,c) P(c)
    torch.testing.assert_close(observed[1], bd.out(h[1] + bd.embed.weight[3]))
    assert float(bd.prior.sum()) == pytest.approx(1.0)


def test_empty_key_sets_give_zeros_not_nan() -> None:
    attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    q, k = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = masked_attention(attn, q, k, mask)
    assert torch.isfinite(out).all() and out[1].abs().sum() == 0


def test_confounder_strata() -> None:
    assert confounder_stratum(None) == 0
    young = ClinicalRecord(subject_id="a", age=60, sex="male", hypertension=False)
    old = ClinicalRecord(subject_id="b", age=85, sex="female", diabetes=True)
    assert confounder_stratum(young) == 0 and confounder_stratum(old) == N_STRATA - 1
