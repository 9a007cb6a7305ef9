"""NIQE against the published figures on the real benchmark images (../shared/data/README.md)."""

from __future__ import annotations

import numpy as np
import pytest

from srcompress.data.images import read_image
from srcompress.errors import UserInputError
from srcompress.metrics import to_uint8
from srcompress.metrics.niqe import niqe, pristine_model

# MATLAB R2021a's `niqe` on baboon; BasicSR's port on Set5 (the reference figures).
MATLAB_BABOON = 5.72957338
BASICSR_SET5 = {"baby": 3.26558, "bird": 4.36208, "butterfly": 5.15489, "head": 8.35050,
                "woman": 4.38900}


def test_baboon_matches_matlab(shared_data):
    image = to_uint8(read_image(shared_data / "benchmarks/Set14/HR/baboon.png"))
    assert niqe(image) == pytest.approx(MATLAB_BABOON, abs=1e-3)


@pytest.mark.parametrize("name", sorted(BASICSR_SET5))
def test_set5_matches_basicsr(shared_data, name):
    """Flat backgrounds (bird, head) are where float64 arithmetic would drift by up to 0.37."""
    image = to_uint8(read_image(shared_data / f"benchmarks/Set5/HR/{name}.png"))
    assert niqe(image) == pytest.approx(BASICSR_SET5[name], abs=1e-3)


def test_shipped_parameters_are_the_official_ones(shared_data):
    official = np.load(shared_data / "niqe/niqe_pris_params.npz")
    mean, covariance, window = pristine_model()
    np.testing.assert_array_equal(mean.numpy(), official["mu_pris_param"].reshape(-1))
    np.testing.assert_array_equal(covariance.numpy(), official["cov_pris_param"])
    np.testing.assert_array_equal(window[0, 0].numpy(), official["gaussian_window"])


def test_degradation_raises_niqe(shared_data):
    """Noise makes a photo less natural: its NIQE must rise clearly above the clean one's."""
    clean = to_uint8(read_image(shared_data / "benchmarks/Set5/HR/butterfly.png"))
    noise = np.random.default_rng(0).normal(0, 25, clean.shape)
    noisy = np.clip(clean + noise, 0, 255).round().astype(np.uint8)
    assert niqe(noisy) > niqe(clean) + 3


def test_too_small_image_is_refused():
    with pytest.raises(UserInputError, match="96x96"):
        niqe(np.zeros((95, 200, 3), dtype=np.uint8))


def test_one_block_and_flat_images_give_a_score_or_none(shared_data):
    """One 96x96 block is one observation: MATLAB's covariance of it is zero (torch.cov gave
    NaN and the inverse failed); a flat image has no texture to fit and no score."""
    image = to_uint8(read_image(shared_data / "benchmarks/Set5/HR/butterfly.png"))
    one_block = np.ascontiguousarray(image[:100, :100])
    assert 0 < niqe(one_block) < 100
    assert np.isnan(niqe(np.full((120, 120, 3), 128, dtype=np.uint8)))
