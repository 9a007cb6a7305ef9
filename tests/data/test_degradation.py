"""The degradation pipelines, each stage against what it must do, on real images."""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srcompress.data.degradation import (
    BicubicDegradation,
    DegradationRandom,
    RealESRGANDegradation,
    RealESRGANOptions,
    read_options,
    resolve_degradation,
)
from srcompress.data.degradation import kernels as K
from srcompress.data.degradation.stages import (
    add_gaussian_noise,
    add_poisson_noise,
    blur,
    jpeg,
    quantise,
)
from srcompress.data.images import read_image
from srcompress.data.resize import imresize
from srcompress.demo import demo_data_folder
from srcompress.errors import UserInputError


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Four 96x96 crops of the three shipped demo photographs, B×3×96×96 in [0, 1]."""
    images = [read_image(path) for path in sorted(demo_data_folder().glob("*.png"))]
    crops = [image[:, :96, :96] for image in images] + [images[0][:, -96:, -96:]]
    return torch.stack(crops)


def _within(observed: float, expected: float, draws: int) -> bool:
    """An observed frequency within 4 standard errors of the expected probability."""
    return abs(observed - expected) <= 4 * math.sqrt(expected * (1 - expected) / draws) + 1e-9


# --- kernels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gaussian", "generalized", "plateau"])
def test_kernel_families_sum_to_one_and_are_centred(family):
    kernel = K.gaussian_kernel(21, 2.5, 1.0, 0.7, family, beta=1.7)
    assert float(kernel.sum()) == pytest.approx(1, abs=1e-12)
    x, y = np.meshgrid(np.arange(21) - 10, np.arange(21) - 10)
    assert float((kernel.numpy() * x).sum()) == pytest.approx(0, abs=1e-12)
    assert float((kernel.numpy() * y).sum()) == pytest.approx(0, abs=1e-12)


def test_anisotropic_gaussian_has_the_rotated_covariance():
    """The second moments of a wide Gaussian kernel are R·diag(σx², σy²)·Rᵀ."""
    sigma_x, sigma_y, theta = 2.0, 1.0, math.pi / 6
    kernel = K.gaussian_kernel(31, sigma_x, sigma_y, theta).numpy()
    x, y = np.meshgrid(np.arange(31) - 15, np.arange(31) - 15)
    measured = np.array([[(kernel * x * x).sum(), (kernel * x * y).sum()],
                         [(kernel * x * y).sum(), (kernel * y * y).sum()]])
    rotation = np.array([[math.cos(theta), -math.sin(theta)],
                         [math.sin(theta), math.cos(theta)]])
    expected = rotation @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rotation.T
    np.testing.assert_allclose(measured, expected, atol=2e-3)


def test_sinc_kernel_passes_below_its_cutoff_and_stops_above():
    cutoff = math.pi / 3
    kernel = K.sinc_kernel(51, cutoff)
    assert float(kernel.sum()) == pytest.approx(1, abs=1e-12)
    response = np.abs(np.fft.fft2(kernel.numpy(), s=(256, 256)))
    frequency = 2 * math.pi * np.fft.fftfreq(256)
    radius = np.hypot(*np.meshgrid(frequency, frequency))
    assert response[radius < 0.6 * cutoff].min() > 0.85
    assert response[radius > 1.4 * cutoff].max() < 0.15


def test_random_kernels_sum_to_one_at_the_largest_size():
    options = RealESRGANOptions()
    generator = torch.Generator().manual_seed(0)
    kernels = torch.stack([K.random_blur_kernel(
        generator, options.kernel_list, options.kernel_prob, options.sinc_prob,
        options.blur_sigma, options.betag_range, options.betap_range, options.kernel_range)
        for _ in range(500)])
    assert kernels.shape == (500, 21, 21)
    np.testing.assert_allclose(kernels.sum(dim=(1, 2)).numpy(), 1, atol=1e-12)


def test_kernel_sizes_are_the_odd_sizes_of_the_range_uniformly():
    generator = torch.Generator().manual_seed(5)
    draws = 4000
    sizes = Counter(K.kernel_size(generator, 7, 21) for _ in range(draws))
    assert set(sizes) == set(range(7, 22, 2))
    for size in range(7, 22, 2):
        assert _within(sizes[size] / draws, 1 / 8, draws), sizes


def test_kernel_family_frequencies_match_the_configuration():
    """kernel_prob and sinc_prob, observed through the draws' own choices."""
    options = RealESRGANOptions()
    generator = torch.Generator().manual_seed(1)
    draws, sinc = 4000, 0
    families = Counter()
    for _ in range(draws):
        K.kernel_size(generator, *options.kernel_range)
        if K.uniform(generator, 0, 1) < options.sinc_prob:
            sinc += 1
            continue
        families[options.kernel_list[K.choice(generator, options.kernel_prob)]] += 1
    assert _within(sinc / draws, options.sinc_prob, draws)
    drawn = draws - sinc
    for name, probability in zip(options.kernel_list, options.kernel_prob, strict=True):
        assert _within(families[name] / drawn, probability, drawn), families


def test_shape_parameter_splits_around_one_like_the_reference():
    generator = torch.Generator().manual_seed(2)
    betas = np.array([K.shape_parameter(generator, 0.5, 4.0) for _ in range(4000)])
    assert betas.min() >= 0.5 and betas.max() <= 4.0
    assert _within(float((betas < 1).mean()), 0.5, 4000)
    above = [K.shape_parameter(generator, 2.0, 3.0) for _ in range(200)]
    assert min(above) >= 2.0 and max(above) <= 3.0


# --- per-batch draws ---------------------------------------------------------------------------


def test_resize_noise_and_order_probabilities_match_the_configuration():
    """Per-batch choices over many batches, and per-image choices over many images."""
    degradation = RealESRGANDegradation()
    options = degradation.options
    generator = torch.Generator().manual_seed(3)
    batches, per_batch = 1500, 1
    kinds = [Counter(), Counter()]
    modes, second_blur, gaussian, sinc_first, grey, qualities = Counter(), 0, 0, 0, [], []
    factors = {"first": [], "second": []}
    for _ in range(batches):
        draw = degradation.draw(per_batch, generator)
        for index, order in enumerate((draw.first, draw.second)):
            kinds[index][order.resize_kind] += 1
            factors["first" if index == 0 else "second"].append(
                (order.resize_kind, order.resize_factor))
        modes[draw.first.resize_mode] += 1
        second_blur += draw.second.blur
        gaussian += draw.first.gaussian_noise
        sinc_first += draw.sinc_before_jpeg
        grey += draw.first.grey_noise.tolist()
        qualities += draw.first.jpeg_quality.tolist()
    for index, probabilities in enumerate((options.resize_prob, options.resize_prob2)):
        for kind, probability in zip(("up", "down", "keep"), probabilities, strict=True):
            assert _within(kinds[index][kind] / batches, probability, batches), kinds[index]
    for mode in ("area", "bilinear", "bicubic"):
        assert _within(modes[mode] / batches, 1 / 3, batches)
    assert _within(second_blur / batches, options.second_blur_prob, batches)
    assert _within(gaussian / batches, options.gaussian_noise_prob, batches)
    assert _within(sinc_first / batches, 0.5, batches)
    assert _within(float(np.mean(grey)), options.gray_noise_prob, len(grey))
    for (order, spans) in (("first", options.resize_range), ("second", options.resize_range2)):
        for kind, factor in factors[order]:
            low, high = {"up": (1, spans[1]), "down": (spans[0], 1), "keep": (1, 1)}[kind]
            assert low <= factor <= high
    assert min(qualities) == 30 and max(qualities) == 95
    assert _within(float(np.mean(np.array(qualities) <= 62)), 33 / 66, len(qualities))


def test_final_sinc_probability_matches_the_configuration():
    degradation = RealESRGANDegradation()
    generator = torch.Generator().manual_seed(4)
    draws = degradation.draw(1000, generator).final_kernels
    pulses = (draws[:, 10, 10] == 1).float().mean()
    assert _within(float(pulses), 1 - degradation.options.final_sinc_prob, 1000)
    np.testing.assert_allclose(draws.sum(dim=(1, 2)).numpy(), 1, atol=1e-12)


# --- stages ------------------------------------------------------------------------------------


def test_jpeg_is_the_library_encoder_at_each_images_quality(photos):
    """Each image of the batch is exactly what libjpeg (through Pillow) makes at its quality."""
    batch = torch.stack([photos[0], photos[0], photos[0], photos[1]])
    qualities = torch.tensor([30, 60, 95, 30])
    coded = jpeg(batch, qualities)
    for image, compressed, quality in zip(batch, coded, qualities.tolist(), strict=True):
        pixels = (quantise(image) * 255).round().byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        expected = np.asarray(Image.open(buffer).convert("RGB"))
        ours = (compressed * 255).round().byte().permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(ours, expected)
    error = [float(((c - quantise(p)) ** 2).mean()) for c, p in zip(coded, batch, strict=True)]
    assert error[0] > error[1] > error[2] > 0


def test_gaussian_noise_has_the_drawn_sigma_and_grey_noise_is_one_plane():
    flat = torch.full((2, 3, 128, 128), 0.5)
    sigma, grey = torch.tensor([10.0, 20.0]), torch.tensor([False, True])
    noisy = add_gaussian_noise(flat, sigma, grey, torch.Generator().manual_seed(0))
    noise = (noisy - flat) * 255
    assert float(noise[0].std()) == pytest.approx(10, rel=0.03)
    assert float(noise[1].std()) == pytest.approx(20, rel=0.03)
    assert float(noise[0].mean()) == pytest.approx(0, abs=4 * 10 / math.sqrt(3 * 128 * 128))
    assert torch.equal(noise[1, 0], noise[1, 1]) and torch.equal(noise[1, 1], noise[1, 2])
    assert not torch.equal(noise[0, 0], noise[0, 1])


def test_poisson_noise_counts_photons_per_distinct_level():
    """One level in use: one photon per unit, so the noise steps are (k − level)·scale; two
    levels: two photons per unit, so var(noise) = level/2 (scale 1)."""
    level = 100 / 255
    flat = torch.full((2, 3, 128, 128), level)
    scale, grey = torch.tensor([0.5, 0.25]), torch.tensor([False, True])
    noise = add_poisson_noise(flat, scale, grey, torch.Generator().manual_seed(0)) - flat
    for index, factor in enumerate(scale.tolist()):
        steps = torch.unique(noise[index])
        assert float(steps[steps > 0].min()) == pytest.approx((1 - level) * factor, rel=1e-5)
        assert float(steps.min()) == pytest.approx(-level * factor, rel=1e-5)
    assert torch.equal(noise[1, 0], noise[1, 2]) and not torch.equal(noise[0, 0], noise[0, 2])
    dark, light = 26 / 255, 77 / 255
    two_levels = torch.full((1, 3, 256, 256), light)
    two_levels[..., :128] = dark
    mixed = add_poisson_noise(two_levels, torch.tensor([1.0]), torch.tensor([False]),
                              torch.Generator().manual_seed(0)) - two_levels
    assert float(mixed[..., :128].var()) == pytest.approx(dark / 2, rel=0.05)


def test_blur_keeps_flat_images_and_pulses_keep_anything(photos):
    kernel = K.gaussian_kernel(21, 3.0, 3.0, 0.0).expand(4, 21, 21)
    flat = torch.full_like(photos, 0.3)
    assert torch.allclose(blur(flat, kernel), flat, atol=1e-6)
    assert torch.allclose(blur(photos, K.pulse_kernel(21).expand(4, 21, 21)), photos, atol=1e-6)
    blurred = blur(photos, kernel)
    assert float((blurred[..., 1:] - blurred[..., :-1]).abs().mean()) < 0.6 * float(
        (photos[..., 1:] - photos[..., :-1]).abs().mean())


# --- whole pipelines ---------------------------------------------------------------------------


def test_realesrgan_output_is_an_8_bit_lr_batch_reproducible_from_its_seed(photos):
    degradation = RealESRGANDegradation()
    first = degradation.degrade(photos, 4, DegradationRandom(7))
    assert first.shape == (4, 3, 24, 24)
    assert torch.equal(first, quantise(first))
    assert torch.equal(first, degradation.degrade(photos, 4, DegradationRandom(7)))
    assert not torch.equal(first, degradation.degrade(photos, 4, DegradationRandom(8)))


def test_realesrgan_inputs_are_further_from_the_image_than_bicubic_ones(photos):
    """Averaged over batches, blur + noise + JPEG move the LR away from the clean bicubic LR."""
    clean = BicubicDegradation().degrade(photos, 2, None)
    degradation = RealESRGANDegradation()
    errors = [float((degradation.degrade(photos, 2, DegradationRandom(seed)) - clean).abs().mean())
              for seed in range(6)]
    assert np.mean(errors) > 0.02


def test_bicubic_is_rounded_matlab_imresize(photos):
    lr = BicubicDegradation().degrade(photos, 4, None)
    assert torch.equal(lr, quantise(imresize(photos, scale=1 / 4)))


def test_small_inputs_fall_back_to_replicated_borders():
    """DUKD degrades 12x12 zoom-out patches: smaller than a 21-tap kernel's reach."""
    small = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    out = RealESRGANDegradation().degrade(small, 4, DegradationRandom(0))
    assert out.shape == (2, 3, 12, 12) and torch.isfinite(out).all()


# --- options -----------------------------------------------------------------------------------


def test_options_from_toml_override_defaults_and_round_trip(tmp_path: Path):
    path = tmp_path / "mild.toml"
    path.write_text("noise_range = [1, 10]\njpeg_range = [70, 95]\nsecond_blur_prob = 0.5\n")
    options = read_options(path)
    assert options.noise_range == (1.0, 10.0) and options.jpeg_range == (70, 95)
    assert options.second_blur_prob == 0.5 and options.resize_prob == (0.2, 0.7, 0.1)
    assert RealESRGANOptions.from_mapping(options.as_dict(), "test") == options
    assert hash(options) == hash(RealESRGANOptions.from_mapping(options.as_dict(), "test"))
    assert isinstance(resolve_degradation(path), RealESRGANDegradation)


@pytest.mark.parametrize(("text", "key"), [
    ("resize_probability = [0.2, 0.7, 0.1]", "resize_probability"),
    ("resize_prob = [0.2, 0.7, 0.2]", "resize_prob"),
    ("blur_sigma = [-1, 3]", "blur_sigma"),
    ("jpeg_range = [0, 95]", "jpeg_range"),
    ("jpeg_range2 = [30, 101]", "jpeg_range2"),
    ("kernel_prob = [0.5, 0.5]", "kernel_prob"),
    ("kernel_list = ['box']", "kernel_list"),
    ("gray_noise_prob = 1.5", "gray_noise_prob"),
    ("kernel_range = [7, 20]", "kernel_range"),
    ("resize_range = [1.2, 1.5]", "resize_range"),
])
def test_bad_degradation_files_are_refused_naming_the_key(tmp_path: Path, text: str, key: str):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(UserInputError, match=rf"{path}.*\b{key}\b"):
        read_options(path)


def test_unknown_degradation_name_is_refused():
    with pytest.raises(UserInputError, match="--degradation must be bicubic, realesrgan"):
        resolve_degradation("realesrgan-x2")
