"""FAKD: ℓ1 between the spatial affinity matrices of student and teacher features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from srcompress.methods import create_method
from srcompress.methods.fakd import spatial_affinity
from srcompress.models.edsr import EDSR


def edsr_features(model: EDSR, x: Tensor) -> list[Tensor]:
    """After the first block and after the body's tail conv, computed by hand."""
    start = model.conv_first(model.shift.normalise(x))
    return [model.body[0](start), model.conv_after_body(model.body(start))]


def test_affinity_is_the_cosine_of_every_pixel_pair(make_pair, make_batch) -> None:
    student, _ = make_pair()
    with torch.no_grad():
        feature = edsr_features(student, make_batch(lr_size=8).lr)[0]
    affinity = spatial_affinity(feature)
    assert affinity.shape == (4, 64, 64)
    torch.testing.assert_close(affinity, affinity.transpose(1, 2))
    torch.testing.assert_close(affinity.diagonal(dim1=1, dim2=2), torch.ones(4, 64))
    pixels = feature.flatten(2)
    torch.testing.assert_close(affinity[1, 5, 40],
                               F.cosine_similarity(pixels[1, :, 5], pixels[1, :, 40], dim=0))
    rescaled = feature * torch.rand(4, 1, 8, 8).add(0.5)
    torch.testing.assert_close(spatial_affinity(rescaled), affinity)


def test_fakd_term_and_gradients_on_real_patches(make_pair, make_batch) -> None:
    student, teacher = make_pair()
    batch = make_batch()
    method = create_method("fakd", w_feat=2.0)
    method.prepare(student, teacher)
    assert method.student_side_parameters() == []
    terms = method.losses(batch, student, teacher)
    with torch.no_grad():
        expected = sum(F.l1_loss(spatial_affinity(s), spatial_affinity(t)) for s, t in zip(
            edsr_features(student, batch.lr), edsr_features(teacher, batch.lr), strict=True))
    torch.testing.assert_close(terms["feat"], 2.0 * expected)
    assert terms["feat"].item() > 0.01
    terms["feat"].backward()
    assert student.body[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
