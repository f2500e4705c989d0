from __future__ import annotations

import numpy as np
import pytest
import torch

from mediad.networks.encoders import ImageEncoder, ImageEncoderConfig, LocalContrast


def brain(seed: int = 0, shape: tuple[int, int, int] = (32, 32, 32)) -> torch.Tensor:
    """A textured ellipsoid in [0, 1], zero outside (as the network's input is)."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, n) for n in shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    inside = (zz / 0.8) ** 2 + (yy / 0.9) ** 2 + (xx / 0.7) ** 2 < 1
    tissue = 0.4 + 0.5 * torch.rand(shape, generator=g)
    tissue = torch.nn.functional.avg_pool3d(tissue[None, None], 3, 1, 1)[0, 0]
    return (tissue * inside)[None, None]


def test_local_contrast_matches_monai_gaussian_filter() -> None:
    """The coarse-grid Fourier blur is a speed-up, not another operation: the ratio it
    gives is the one MONAI's full-resolution GaussianFilter gives."""
    from monai.networks.layers import GaussianFilter

    x = brain()
    inside = x > 0
    for sigma in (1.5, 3.0):
        lc = LocalContrast(sigma)
        gauss = GaussianFilter(3, sigma)
        local = gauss(x) / gauss(inside.float()).clamp_min(1e-3)
        expected = inside * (x / local.clamp_min(lc.floor)).clamp(max=lc.ceiling)
        assert float((lc(x) - expected)[inside].abs().mean()) < 0.005
        assert float((lc(x) - expected).abs().max()) < 0.05


def test_a_smooth_bias_field_cancels_and_the_tissue_contrast_stays() -> None:
    from monai.transforms import RandBiasField

    x = brain()
    inside = x > 0
    field = RandBiasField(degree=3, coeff_range=(0.0, 0.45), prob=1.0)
    field.set_random_state(seed=3)
    biased = torch.as_tensor(field(x[0]))[None].float() * inside
    raw = float((biased - x)[inside].std() / x[inside].std())
    lc = LocalContrast(3.0)
    clean, corrected = lc(x), lc(biased)
    left = float((corrected - clean)[inside].std() / clean[inside].std())
    assert raw > 0.1
    assert left < 0.25 * raw
    # the tissue's own texture is kept: the output follows the input inside the brain
    r = np.corrcoef(clean[inside].numpy(), x[inside].numpy())[0, 1]
    assert r > 0.8
    assert float(clean[~inside].abs().max()) == 0.0
    assert float(clean.min()) >= 0.0 and float(clean.max()) <= lc.ceiling


def test_a_global_gain_changes_nothing() -> None:
    x = brain()
    lc = LocalContrast(3.0)
    torch.testing.assert_close(lc(0.5 * x), lc(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sigma", [0.0, 3.0])
def test_the_encoder_reads_local_contrast_only_when_asked(sigma: float) -> None:
    config = ImageEncoderConfig(channels=(8, 8, 16, 16), local_contrast_sigma=sigma)
    encoder = ImageEncoder(config, 16, (32, 32, 32)).eval()
    assert (encoder.local_contrast is not None) == (sigma > 0)
    x = brain()
    out, scaled = encoder(x), encoder(0.5 * x)
    assert out.shape == (1, 8, 16)
    # a global gain: instance norm takes most of it out, local contrast all of it
    same = torch.allclose(out, scaled, atol=1e-4)
    assert same == (sigma > 0)
