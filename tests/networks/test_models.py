from __future__ import annotations

import numpy as np
import pytest
import torch

from mediad.errors import MediADError
from mediad.networks.encoders import ImageEncoderConfig
from mediad.networks.models import KINDS, ModelConfig, TabularBaseline, build_model

SMALL = {"image": ImageEncoderConfig(channels=(8, 8, 16, 16)), "d_model": 16, "heads": 2,
         "n_prototypes": 4}
SHAPE = (32, 32, 32)


def batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(n, 1, *SHAPE, generator=g),
        "has_image": torch.tensor([1.0, 1.0, 0.0, 1.0][:n]),
        "text": torch.randn(n, 5, 384, generator=g),
        "has_text": torch.tensor([1.0, 0.0, 1.0, 1.0][:n]),
        "tab_values": torch.randn(n, 12, generator=g) * 10 + 50,
        "tab_mask": (torch.rand(n, 12, generator=g) > 0.3).float(),
        "site": torch.tensor([0, 1, 2, -1][:n]),
        "confounders": torch.randn(n, 3, generator=g),
        "label": torch.tensor([0, 1, 2, 1][:n]),
    }


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "tabular"])
@pytest.mark.parametrize("tabular", [False, True])
def test_every_variant_shapes_and_masks(kind: str, tabular: bool) -> None:
    model = build_model(ModelConfig(kind=kind, use_tabular=tabular, **SMALL), SHAPE).eval()
    b = batch()
    out = model(b)
    assert out.log_probs.shape == (4, 3) and out.log_probs_mediator.shape == (4, 3)
    torch.testing.assert_close(out.log_probs.exp().sum(1), torch.ones(4))
    # a masked (absent) MRI cannot influence the prediction
    b2 = dict(b, image=b["image"].clone())
    b2["image"][2] = torch.rand(1, *SHAPE) * 100
    torch.testing.assert_close(model(b2).log_probs[2], out.log_probs[2])
    model.train()
    loss = model.loss(model(b), b["label"])
    loss.backward()
    assert torch.isfinite(loss)


def test_task_cn_ad_has_two_classes() -> None:
    model = build_model(ModelConfig(task="cn_ad", **SMALL), SHAPE).eval()
    assert model(batch()).log_probs.shape == (4, 2)


def test_back_door_prediction_needs_no_site() -> None:
    """P(Y|do(X)) sums over the training sites, so the site a sample was observed at (or
    none, as at prediction time) cannot move it, while P(Y|X, s) must depend on s."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mediad", sites=("A", "B", "C"), **SMALL),
                        SHAPE).eval()
    assert model.back_door is not None and model.back_door.prior.shape == (3,)
    torch.nn.init.normal_(model.back_door.film.weight, std=1.0)  # sites that matter
    b = batch()
    out = model(b)
    moved = model(dict(b, site=(b["site"] + 1) % 3))
    unknown = model({k: v for k, v in b.items() if k != "site"})
    torch.testing.assert_close(moved.log_probs, out.log_probs)
    torch.testing.assert_close(unknown.log_probs, out.log_probs)
    assert not torch.allclose(moved.aux["conditional_logits"], out.aux["conditional_logits"])


@pytest.mark.parametrize("kind", ["mediad", "concat"])
def test_site_adversary_is_trained_only_with_sites(kind: str) -> None:
    """The site term exists with two or more training sites, enters the loss only for
    samples whose site is known, and pushes the features away from the site (reversed
    gradient); without sites, or at evaluation, there is none."""
    torch.manual_seed(0)
    b = batch()
    plain = build_model(ModelConfig(kind=kind, **SMALL), SHAPE).train()
    assert plain.site_adversary is None and "site_adversarial" not in plain.losses(
        plain(b), b["label"])
    model = build_model(ModelConfig(kind=kind, sites=("A", "B", "C"), site_adversarial=1.0,
                                    **SMALL), SHAPE).train()
    assert model.site_adversary is not None
    out = model(b)
    terms = model.losses(out, b["label"], torch.ones(4))
    assert torch.isfinite(terms["site_adversarial"])
    # conditional on the diagnosis: each class has its own site logits, read at the label
    assert out.aux["site_logits"].shape == (4, 3 * 3)
    other = model.losses(out, (b["label"] + 1) % 3, torch.ones(4))
    assert not torch.isclose(other["site_adversarial"], terms["site_adversarial"])
    unknown = model.losses(model(dict(b, site=torch.full((4,), -1))), b["label"])
    assert "site_adversarial" not in unknown
    assert "site_logits" not in model.eval()(b).aux


def test_sample_weights_weigh_the_loss() -> None:
    """Per-sample weights are a weighted mean: weight 0 removes a sample from the loss."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="concat", dropout=0.0, **SMALL), SHAPE).eval()
    b = batch()
    out = model(b)
    per_sample = torch.nn.functional.nll_loss(out.log_probs, b["label"], reduction="none")
    w = torch.tensor([1.0, 0.0, 3.0, 0.0])
    torch.testing.assert_close(model.losses(out, b["label"], w)["prediction"],
                               (per_sample * w).sum() / w.sum())


def test_front_door_dictionary_moves_only_the_adjusted_prediction() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mediad", **SMALL), SHAPE).eval()
    assert model.front_door is not None
    b = batch()
    before = model(b)
    model.front_door.prototypes.copy_(torch.randn_like(model.front_door.prototypes) * 3)
    after = model(b)
    assert (after.log_probs - before.log_probs).abs().max() > 1e-3
    torch.testing.assert_close(after.log_probs_mediator, before.log_probs_mediator)
    concat = build_model(ModelConfig(kind="concat", **SMALL), SHAPE).eval()
    out = concat(b)
    torch.testing.assert_close(out.log_probs, out.log_probs_mediator)  # no mediator head


def test_a_few_steps_reduce_the_loss_and_a_tiny_set_is_overfitted() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mediad", use_tabular=True, dropout=0.0, **SMALL),
                        SHAPE)
    b = {k: torch.cat([batch(seed=s)[k] for s in range(3)]) for k in batch()}  # 12 samples
    b["label"] = torch.tensor([0, 1, 2, 1, 2, 0, 1, 0, 2, 2, 0, 1])
    b["has_text"] = torch.ones(12)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        model.train()
        loss = model.loss(model(b), b["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    model.eval()
    assert (model(b).log_probs.argmax(1) == b["label"]).all()


def test_model_without_inputs_is_refused() -> None:
    with pytest.raises(ValueError, match="has no input"):
        build_model(ModelConfig(kind="concat", use_image=False, use_text=False, **SMALL))


def test_wrong_image_shape_is_a_clear_error() -> None:
    model = build_model(ModelConfig(kind="image_only", **SMALL), SHAPE).eval()
    b = batch()
    b["image"] = b["image"][:, 0]
    with pytest.raises(MediADError, match=r"image batch must be \(B, 1, D, H, W\)"):
        model(b)


def test_tabular_baseline_round_trip() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = np.c_[y + rng.normal(0, 0.3, 60), rng.normal(size=60)]
    x[::7, 1] = np.nan  # missing stays missing
    a = TabularBaseline(ModelConfig(kind="tabular")).fit(x, y)
    b = TabularBaseline(ModelConfig(kind="tabular"))
    b.load_state_dict(a.state_dict())
    np.testing.assert_allclose(a.predict_log_proba(x), b.predict_log_proba(x), rtol=1e-9)
    assert (a.predict_log_proba(x).argmax(1) == y).mean() > 0.9


def test_channels_must_suit_group_norm() -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        ImageEncoderConfig(channels=(6, 8, 16, 16))


def test_too_small_images_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too small for the cnn encoder"):
        build_model(ModelConfig(kind="image_only", **SMALL), (16, 16, 16))


@pytest.mark.parametrize(("name", "size"), [("cnn", 32), ("resnet", 32), ("densenet121", 32),
                                            ("swinvit", 64)])
def test_every_image_backbone_gives_tokens(name: str, size: int) -> None:
    from mediad.networks.encoders import ImageEncoder

    encoder = ImageEncoder(ImageEncoderConfig(name=name), d_model=16, image_size=(size,) * 3)
    with torch.no_grad():
        tokens = encoder.eval()(torch.rand(1, 1, size, size, size))
    assert tokens.ndim == 3 and tokens.shape[0] == 1 and tokens.shape[2] == 16


def _two_way_task(n: int, seed: int) -> dict[str, torch.Tensor]:
    """The label is in the image (a bright block, left, right or none) and in the text."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    img = torch.rand(n, 1, *SHAPE, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        if c < 2:
            x0 = 4 if c == 0 else 20
            img[i, 0, x0:x0 + 8, 10:22, 10:22] += 1.0
    text = torch.randn(n, 5, 384, generator=g) * 0.1
    text[torch.arange(n), 0, y] += 3.0
    return {"image": img, "has_image": torch.ones(n), "text": text, "has_text": torch.ones(n),
            "tab_values": torch.zeros(n, 12), "tab_mask": torch.zeros(n, 12),
            "site": torch.zeros(n, dtype=torch.long), "confounders": torch.zeros(n, 3),
            "label": y}


@pytest.mark.slow
def test_mri_only_predictions_follow_the_mri() -> None:
    """Trained as the trainer trains (with modality dropout), an MRI-only prediction must
    depend on the MRI: new images of each class get their class, and the answers differ."""
    from mediad.engine.samples import drop_modalities

    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mediad", dropout=0.0, **SMALL), SHAPE)
    b, rng = _two_way_task(18, 0), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        model.train()
        step = drop_modalities(b, 0.3, rng)
        loss = model.loss(model(step), step["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    new = _two_way_task(30, 1)
    with torch.no_grad():
        mri_only = model(dict(new, has_text=torch.zeros(30))).log_probs.exp()
    assert (mri_only.argmax(1) == new["label"]).float().mean() >= 0.8
    assert float(mri_only.std(0).max()) > 0.2  # not one answer for every brain


def test_modality_dropout_hides_inputs_but_keeps_one() -> None:
    from mediad.engine.samples import drop_modalities

    n = 2000
    b = {"has_image": torch.ones(n), "has_text": torch.ones(n),
         "tab_mask": torch.ones(n, 12)}
    b["has_image"][:500] = 0  # absent inputs stay absent
    out = drop_modalities(b, 0.3, torch.Generator().manual_seed(0))
    kept = torch.stack([out["has_image"], out["has_text"], out["tab_mask"].amax(1)], 1)
    assert (kept.sum(1) >= 1).all() and (out["has_image"][:500] == 0).all()
    rates = 1 - kept[500:].mean(0)
    assert ((rates > 0.2) & (rates < 0.4)).all(), rates  # about p, per input
    # a record's fields are hidden together
    assert (out["tab_mask"].amax(1) == out["tab_mask"].amin(1)).all()
    assert bool(b["has_text"].all())  # the caller's batch is not modified
    assert drop_modalities(b, 0.0, torch.Generator()) is b
    # an input the model does not read is never the one kept: an MRI-only model keeps its
    # MRI (and the record it ignores passes through untouched)
    mri_only = drop_modalities(b, 0.5, torch.Generator().manual_seed(1), (True, False, False))
    assert bool(mri_only["has_image"][500:].all()) and bool(mri_only["has_text"].all())
    both = drop_modalities(b, 0.5, torch.Generator().manual_seed(1), (True, True, False))
    assert ((both["has_image"] + both["has_text"])[500:] >= 1).all()


def test_site_adversary_warm_up_scales_what_reaches_the_features() -> None:
    """At warm-up factor 0 the adversary learns but sends nothing back into the features;
    at 1 it does (the DANN schedule ramps between them)."""
    from mediad.engine.trainer import warmup_factor

    assert warmup_factor(1, 10) == 0.0 and warmup_factor(11, 10) > 0.999
    assert 0.4 < warmup_factor(2, 10) < 0.5 and warmup_factor(1, 0) == 1.0
    b = batch()
    grads = {}
    for scale in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind="concat", sites=("A", "B", "C"),
                                        site_adversarial=1.0, **SMALL), SHAPE).train()
        model.site_scale = scale
        model.losses(model(b), b["label"])["site_adversarial"].backward()
        grads[scale] = model.text[0].weight.grad
        assert model.site_adversary[0].weight.grad.abs().sum() > 0  # the adversary learns
    assert grads[0.0] is None or grads[0.0].abs().sum() == 0
    assert grads[1.0].abs().sum() > 0


@pytest.mark.parametrize("kind", ["concat", "xattn", "mediad"])
def test_each_modality_is_trained_on_its_own(kind: str) -> None:
    """The unimodal terms send label gradient to the MRI encoder from the MRI alone, and
    count only samples that have the input; MRI-only models do without them."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, sites=("A", "B"), **SMALL), SHAPE)
    model.train()
    b = batch()
    terms = model.losses(model(b), b["label"])
    assert {"unimodal_image", "unimodal_record"} <= set(terms)
    model.zero_grad()
    terms["unimodal_image"].backward()
    encoder_grad = sum(float(p.grad.abs().sum()) for p in model.image.parameters()
                       if p.grad is not None)
    assert encoder_grad > 0
    assert model.text is not None
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0
               for p in model.text.parameters())  # the MRI's term reaches no record path
    # a batch without any MRI: the image term is 0 (but still in the graph, for DDP)
    no_mri = dict(b, has_image=torch.zeros(4))
    assert float(model.losses(model(no_mri), b["label"])["unimodal_image"]) == 0.0
    # evaluation and unimodal models carry no such term
    model.eval()
    assert "unimodal_image" not in model.losses(model(b), b["label"])
    solo = build_model(ModelConfig(kind="image_only", **SMALL), SHAPE)
    assert solo.unimodal is None


@pytest.mark.parametrize("kind", ["mediad", "image_only"])
def test_predict_averages_over_shifted_images(kind: str) -> None:
    """The answer users get is the mean probability over the MRI rolled by up to one voxel
    per axis (27 positions); training, and a batch without MRIs, read the plain forward."""
    import itertools

    model = build_model(ModelConfig(kind=kind, **SMALL), SHAPE).eval()
    b = batch()
    with torch.no_grad():
        want = torch.stack([model({**b, "image": torch.roll(b["image"], o, dims=(2, 3, 4))}
                                  ).log_probs.exp()
                            for o in itertools.product((-1, 0, 1), repeat=3)]).mean(0)
        got = model.predict(b)
        torch.testing.assert_close(got.log_probs.exp(), want, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(got.log_probs[:2], model(b).log_probs[:2], atol=1e-4)
        # the read-out (the OOD distance's features) is the unshifted image's
        if got.readout is not None:
            torch.testing.assert_close(got.readout, model(b).readout)
        no_mri = {**b, "has_image": torch.zeros(4)}
        torch.testing.assert_close(model.predict(no_mri).log_probs, model(no_mri).log_probs)
        plain = build_model(ModelConfig(kind=kind, shift_average=0, **SMALL), SHAPE).eval()
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(plain.predict(b).log_probs, model(b).log_probs)


def test_predict_views_share_the_encoder_and_match_predict() -> None:
    """The input patterns of one batch, predicted together, give exactly what each gives
    alone, with the image encoder run once per shift instead of once per pattern."""
    model = build_model(ModelConfig(kind="mediad", **SMALL), SHAPE).eval()
    b = batch()
    mri_only = {**b, "has_text": torch.zeros(4), "tab_mask": torch.zeros_like(b["tab_mask"])}
    record_only = {**b, "has_image": torch.zeros(4)}
    calls = []
    hook = model.image.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        together = model.predict_views([b, mri_only, record_only])
        n_together = len(calls)
        alone = [model.predict(v) for v in (b, mri_only, record_only)]
        plain = model.predict_views([b, mri_only], average=False)
    hook.remove()
    assert n_together == 27 + 1  # 27 shifts for both imaged views; 1 for record-only
    assert len(calls) - n_together == 27 + 27 + 1 + 1  # alone, then the unshifted pair
    for t, a in zip(together, alone, strict=True):
        torch.testing.assert_close(t.log_probs, a.log_probs, rtol=0, atol=0)
        torch.testing.assert_close(t.readout, a.readout, rtol=0, atol=0)
    torch.testing.assert_close(plain[1].log_probs, model(mri_only).log_probs, rtol=0, atol=0)
    assert not torch.equal(together[0].log_probs, together[1].log_probs)
    with pytest.raises(ValueError, match="same image"):
        model.predict_views([b, {**b, "image": b["image"].clone()}])
