"""The causal head computes the formulas its docstrings state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mediad.networks.causal import (
    BackDoorAdjustment,
    FrontDoorAdjustment,
    masked_attention,
    remove_group_means,
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


def _identity_front_door() -> FrontDoorAdjustment:
    """D = 2, two prototypes e1 and e2 with prior (0.25, 0.75), identity projections."""
    fd = FrontDoorAdjustment(d_model=2, n_prototypes=2)
    for lin in (fd.q, fd.k, fd.v):
        lin.weight.data.copy_(torch.eye(2))
    fd.prototypes.copy_(torch.eye(2))
    fd.prior.copy_(torch.tensor([0.25, 0.75]))
    return fd


def test_front_door_weights_on_hand_computed_numbers() -> None:
    """m = (2, 0): scores (2/√2, 0); α ∝ (0.25·e^√2, 0.75) = (1.0283, 0.75) -> (0.5782, 0.4218).

    Without the prior it would be (0.8044, 0.1956); without the √D scale (0.7112, 0.2888).
    """
    fd = _identity_front_door()
    alpha = fd.weights(torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(alpha, torch.tensor([[0.5782, 0.4218]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(fd(torch.tensor([[2.0, 0.0]])), torch.tensor([[0.5782, 0.4218]]),
                               atol=1e-4, rtol=0)  # x̂ = Σ α_k W_v d_k with d_k = e_k


def test_front_door_prototype_without_mass_gets_no_weight() -> None:
    fd = _identity_front_door()
    fd.prior.copy_(torch.tensor([1.0, 0.0]))
    with torch.no_grad():
        alpha = fd.weights(torch.tensor([[0.0, 50.0]]))  # however well it matches e2
    assert float(alpha[0, 1]) < 1e-6


def test_nwgm_approximates_the_expectation_for_the_trained_head(tiny_run: Path,
                                                                tiny_cohort: Path) -> None:
    """The model's own classifier: softmax(g(m, E[x'])) vs E_{x'}[softmax(g(m, x'))]
    (back-door sum included), on mediators of real subjects."""
    from mediad.data.records import load_manifest
    from mediad.engine.predictor import Predictor

    pred = Predictor(tiny_run / "best.pt")
    model = pred.model
    assert model.front_door is not None and model.back_door is not None
    rows = load_manifest(tiny_cohort / "manifest.csv").rows[:6]
    captured: dict[str, torch.Tensor] = {}
    hook = model.mediator.register_forward_hook(lambda _m, _i, out: captured.update(m=out))
    pred.predict_many([(r.mri_path, r) for r in rows])
    hook.remove()
    m = captured["m"].clone()
    fd = model.front_door

    def head(h_in: torch.Tensor) -> torch.Tensor:  # P(Y|do(X)) for a given [m; x]
        log_mix, _ = model.back_door(model.hidden(h_in), torch.zeros(len(m), dtype=torch.long))
        return log_mix.exp()

    with torch.no_grad():
        alpha, values = fd.weights(m), fd.v(fd.prototypes)
        exact = sum(alpha[:, k:k + 1] * head(torch.cat([m, values[k].expand(len(m), -1)], 1))
                    for k in range(values.shape[0]))
        nwgm = head(torch.cat([m, fd(m)], 1))
    gap = float((exact - nwgm).abs().max())
    assert gap < 0.05, f"NWGM is {gap:.3f} from the expectation it stands for"


def test_refresh_is_kmeans_with_frequencies() -> None:
    fd = FrontDoorAdjustment(d_model=2, n_prototypes=2)
    feats = torch.cat([torch.randn(30, 2) * 0.01 + 5, torch.randn(10, 2) * 0.01 - 5])
    fd.refresh(feats, seed=1)
    order = fd.prototypes[:, 0].argsort(descending=True)
    torch.testing.assert_close(fd.prototypes[order].round(), torch.tensor([[5.0, 5], [-5, -5]]))
    torch.testing.assert_close(fd.prior[order], torch.tensor([0.75, 0.25]))
    assert bool(fd.ready)


def test_back_door_on_hand_computed_numbers() -> None:
    """Two sites: FiLM (γ, β) = 0 for site 0 and β_1 = (2, 0) for site 1; W = I, b = 0; h = 0.

    P(Y|X,s0) = (0.5, 0.5); P(Y|X,s1) = softmax(2, 0) = (0.8808, 0.1192). Training sites
    [0, 0, 0, 1] give the prior (3.5, 1.5)/5 = (0.7, 0.3) (add-0.5 smoothing; unknown sites,
    -1, are ignored), so Σ_s P(Y|X,s) P(s) = (0.6142, 0.3858).
    """
    bd = BackDoorAdjustment(d_hidden=2, n_classes=2, n_strata=2)
    bd.film.weight.data.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]))
    bd.out.weight.data.copy_(torch.eye(2))
    bd.out.bias.data.zero_()
    bd.set_prior(np.array([0, 0, 0, 1, -1, -1]))
    torch.testing.assert_close(bd.prior, torch.tensor([0.7, 0.3]))
    log_mix, observed = bd(torch.zeros(2, 2), torch.tensor([0, 1]))
    torch.testing.assert_close(log_mix.exp(), torch.tensor([[0.6142, 0.3858]] * 2), atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(observed, torch.tensor([[0.0, 0.0], [2.0, 0.0]]))


def test_back_door_site_interacts_with_the_features() -> None:
    """FiLM, not an offset: with γ_1 = (1, 0) site 1 doubles the first feature, so how much
    the site changes the logits depends on X (an additive offset would not)."""
    bd = BackDoorAdjustment(d_hidden=2, n_classes=2, n_strata=2)
    bd.film.weight.data.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    bd.out.weight.data.copy_(torch.eye(2))
    bd.out.bias.data.zero_()
    logits = bd.conditional_logits(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    site_effect = logits[:, 1] - logits[:, 0]  # per sample
    torch.testing.assert_close(site_effect, torch.tensor([[1.0, 0.0], [3.0, 0.0]]))


def test_group_means_are_removed_before_clustering() -> None:
    """Two sites whose features differ only by a site offset: after centring, the sites'
    means coincide, and the dictionary has no prototype per site."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, (40, 2))
    sites = np.repeat([0, 1], 20)
    x[sites == 1] += 5.0
    centred = remove_group_means(x, sites)
    np.testing.assert_allclose(centred[sites == 0].mean(0), centred[sites == 1].mean(0),
                               atol=1e-9)
    np.testing.assert_allclose(centred.mean(0), x.mean(0))
    fd = FrontDoorAdjustment(d_model=2, n_prototypes=2)
    fd.refresh(x, seed=0)  # raw: one prototype per site
    assert fd.prototypes[:, 0].max() - fd.prototypes[:, 0].min() > 4
    fd.refresh(x, seed=0, groups=sites)  # centred: none
    assert fd.prototypes[:, 0].max() - fd.prototypes[:, 0].min() < 1


def test_empty_key_sets_give_zeros_not_nan() -> None:
    attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    q, k = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = masked_attention(attn, q, k, mask)
    assert torch.isfinite(out).all() and out[1].abs().sum() == 0
