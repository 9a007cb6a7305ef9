"""Loading checkpoints in every layout people have, safely, and writing ours bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from srcompress.models import build_model, load_model, save_model
from srcompress.models.edsr import EDSR
from srcompress.models.rcan import RCAN
from tests.models.reference_nets import OriginalEDSR, OriginalRCAN


def _image(height: int = 20, width: int = 17, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights (fresh zero biases would hide key mix-ups)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return module.eval()


def _info(cli, path: Path) -> dict:
    result = cli("info", path, "--json", "-")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(("scale", "wrapper"), [(2, "params"), (3, "params_ema"), (4, None)])
def test_basicsr_edsr_is_detected_and_reproduced_exactly(tmp_path, cli, scale, wrapper):
    original = _randomised(EDSR(scale=scale, num_feat=16, num_block=3))
    state = original.state_dict()
    assert "body.2.conv1.weight" in state and "upsample.0.weight" in state
    path = tmp_path / "edsr.pth"
    torch.save({wrapper: state} if wrapper else state, path)

    report = _info(cli, path)
    assert (report["architecture"], report["scale"]) == ("edsr", scale)
    assert report["settings"]["num_feat"] == 16 and report["settings"]["num_block"] == 3

    loaded = load_model(path)
    x = _image()
    assert torch.equal(loaded.module(x), original(x))


def test_edsr_pytorch_layout_loads_into_our_edsr(tmp_path, cli):
    original = _randomised(OriginalEDSR(n_resblocks=4, n_feats=16, scale=4))
    path = tmp_path / "edsr_x4.pt"
    torch.save(original.state_dict(), path)
    report = _info(cli, path)
    assert report["architecture"] == "edsr" and report["scale"] == 4
    assert report["settings"]["num_block"] == 4 and report["metadata"]["layout"] == "edsr-pytorch"

    x = _image()
    expected = original(x * 255.0) / 255.0
    # Same weights, same arithmetic except where the mean is subtracted (x·255 − 255·μ in the
    # original, (x − μ)·255 here): float32 rounding only.
    torch.testing.assert_close(load_model(path).module(x), expected, rtol=0, atol=1e-5)


def test_rcan_layouts(tmp_path, cli):
    ours = _randomised(RCAN(scale=2, num_feat=16, num_group=2, num_block=3, squeeze_factor=4))
    basicsr_path = tmp_path / "rcan_basicsr.pth"
    torch.save({"params_ema": ours.state_dict()}, basicsr_path)
    report = _info(cli, basicsr_path)
    assert report["architecture"] == "rcan" and report["scale"] == 2
    assert {k: report["settings"][k] for k in ("num_group", "num_block", "squeeze_factor")} == {
        "num_group": 2, "num_block": 3, "squeeze_factor": 4}
    x = _image()
    assert torch.equal(load_model(basicsr_path).module(x), ours(x))

    original = _randomised(OriginalRCAN(n_resgroups=3, n_resblocks=2, n_feats=16, reduction=4,
                                        scale=3), seed=1)
    original_path = tmp_path / "rcan_original.pt"
    torch.save(original.state_dict(), original_path)
    report = _info(cli, original_path)
    assert report["architecture"] == "rcan" and report["scale"] == 3
    assert report["settings"]["num_group"] == 3 and report["settings"]["num_block"] == 2
    torch.testing.assert_close(load_model(original_path).module(x), original(x * 255) / 255,
                               rtol=0, atol=1e-5)


def test_swinir_through_spandrel(tmp_path, cli):
    student = build_model("swinir:embed_dim=12,depths=[2,2],num_heads=[2,2],window_size=8,"
                          "upsampler=pixelshuffle", 2)
    original = _randomised(student.module)
    path = tmp_path / "swinir.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in original.state_dict().items()},
                                str(path))
    report = _info(cli, path)
    assert report["architecture"] == "swinir" and report["scale"] == 2
    assert report["settings"]["embed_dim"] == 12 and report["settings"]["depths"] == [2, 2]
    x = _image(24, 19)
    assert torch.equal(load_model(path).module(x), original(x))


def test_save_load_round_trip_is_bit_exact_with_metadata(tmp_path):
    model = build_model("edsr:num_feat=8,num_block=2", 2)
    _randomised(model.module)
    path = save_model(tmp_path / "student.safetensors", model, method="dukd",
                      teacher="teacher.pth", metrics={"Set5": {"psnr": 30.5}})
    loaded = load_model(path)
    assert loaded.arch == "edsr" and loaded.scale == 2 and loaded.settings == model.settings
    assert loaded.metadata["method"] == "dukd"
    assert loaded.metadata["metrics"] == {"Set5": {"psnr": 30.5}}
    for key, value in model.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value)
    assert list(tmp_path.iterdir()) == [path]


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickle_that_runs_code_is_refused(tmp_path, cli):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"params": _Exploit(marker)}, path)
    result = cli("info", path)
    assert result.exit_code == 2
    assert "Refused to load" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.safetensors"
    save_model(good, build_model("edsr:num_feat=8,num_block=1", 2))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    unknown = tmp_path / "unknown.pth"
    torch.save({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, unknown)
    misfit = tmp_path / "misfit.pth"
    state = EDSR(scale=2, num_feat=8, num_block=2).state_dict()
    state["body.1.conv2.weight"] = torch.zeros(8, 8, 5, 5)
    torch.save(state, misfit)
    return {"truncated": truncated, "empty": empty, "unknown": unknown, "misfit": misfit,
            "missing": tmp_path / "nowhere.pth"}


@pytest.mark.parametrize("case", ["truncated", "empty", "unknown", "misfit", "missing"])
def test_bad_checkpoints_get_one_sentence_and_exit_2(tmp_path, cli, case):
    path = _bad_inputs(tmp_path)[case]
    result = cli("info", path)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert str(path) in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_misfit_message_names_the_key(tmp_path, cli):
    result = cli("info", _bad_inputs(tmp_path)["misfit"])
    assert "body.1.conv2.weight" in result.stderr


def test_arch_override_sets_what_weights_cannot_tell(tmp_path):
    original = _randomised(EDSR(scale=2, num_feat=8, num_block=2, res_scale=0.1))
    path = tmp_path / "edsr.pth"
    torch.save(original.state_dict(), path)
    x = _image()
    assert not torch.equal(load_model(path).module(x), original(x))
    overridden = load_model(path, arch="edsr:num_feat=8,num_block=2,res_scale=0.1")
    assert torch.equal(overridden.module(x), original(x))
