"""Dataset-level transforms: the optional MRI and the scanner augmentation."""

from __future__ import annotations

import torch

from mediad.data.transforms import MaybeImaged, scanner_augmentation


def _brain(shape: int = 32) -> torch.Tensor:
    """A smooth blob inside a zero background, on the [0, 1] scale the ingest produces."""
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, shape)] * 3, indexing="ij"))
    r = grid.pow(2).sum(0).sqrt()
    return torch.where(r < 0.7, 0.4 + 0.6 * torch.cos(3 * r).abs(), 0.0)[None]


def test_scanner_augmentation_keeps_the_ingest_scale_and_the_background() -> None:
    x = {"image": _brain()}
    aug = scanner_augmentation()
    aug.set_random_state(0)
    for _ in range(4):
        out = aug(x)["image"]
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert bool((out[x["image"] == 0] == 0).all())  # no noise outside the brain


def test_a_missing_mri_is_a_blank_flagged_volume() -> None:
    def fail(_: dict) -> dict:
        raise AssertionError("the pipeline must not run without an MRI")

    out = MaybeImaged(fail, (8, 8, 8))({"image": "", "label": 1})
    assert out["image"].shape == (1, 8, 8, 8) and float(out["image"].abs().sum()) == 0.0
    assert float(out["has_image"]) == 0.0 and out["label"] == 1
