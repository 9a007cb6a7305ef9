"""Initial activation clipping ranges from a few batches of real inputs.

Learned clipping only fine-tunes a range; starting from a bad one (too wide wastes levels, too
narrow clips the residual stream) costs a lot of training at 4 and 2 bits. Each quantised tensor
is observed in full precision (every quantiser and layer runs in float meanwhile), and its range
set to the value that minimises the quantisation error of what was observed at its bit-width, a
bit-aware choice that lands near max|x| at 8 bits and clips the long tail at low bits. A tensor
that was never negative (a ReLU output) gets the grid with zero point 0, which has twice the
levels above zero; the others the grid centred on zero point 2^(b-1).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from srcompress.errors import UserInputError
from srcompress.quant.fakequant import ActivationQuantizer, fake_quantize
from srcompress.quant.graph import activation_quantizers

# Values kept per layer and batch, and in all, for the error search (a random sample estimates the
# error well); the exact extremes are tracked separately.
_SAMPLES_PER_BATCH = 1 << 16
_SAMPLES_PER_LAYER = 1 << 18
_CANDIDATES = 80


class _Observer:
    def __init__(self) -> None:
        self.samples: list[Tensor] = []
        self.largest = 0.0
        self.smallest = 0.0

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        values = inputs[0].detach().float().flatten()
        self.largest = max(self.largest, float(values.max()))
        self.smallest = min(self.smallest, float(values.min()))
        if values.numel() > _SAMPLES_PER_BATCH:
            index = torch.randint(values.numel(), (_SAMPLES_PER_BATCH,), device=values.device)
            values = values[index]
        self.samples.append(values)


def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, float]:
    """Set every `ActivationQuantizer`'s range and sign from `batches` (B×C×H×W inputs).

    Everything runs in full precision while observing, so each range is measured on the float
    activations it will quantise. Returns the chosen clipping value per quantiser.
    """
    layers: dict[str, ActivationQuantizer] = dict(activation_quantizers(model))
    if not layers:
        raise UserInputError("the model has no quantized layer to calibrate: run "
                             "quantize_model first.")
    observers = {name: _Observer() for name in layers}
    handles = [layer.register_forward_pre_hook(observers[name]) for name, layer in layers.items()]
    was_training = model.training
    seen = 0
    try:
        model.eval()
        for layer in layers.values():
            layer.enabled = False
        with torch.no_grad():
            for batch in batches:
                model(batch)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers.values():
            layer.enabled = True
        model.train(was_training)
    if seen == 0:
        raise UserInputError("calibration received no batches: give it at least one input batch.")
    chosen: dict[str, float] = {}
    for name, layer in layers.items():
        observer = observers[name]
        signed = observer.smallest < 0
        samples = torch.cat(observer.samples)
        if samples.numel() > _SAMPLES_PER_LAYER:
            samples = samples[torch.randperm(samples.numel(), device=samples.device)
                              [:_SAMPLES_PER_LAYER]]
        clip = _best_clip(samples, max(observer.largest, -observer.smallest), layer.bits, signed)
        with torch.no_grad():
            layer.act_signed.fill_(signed)
            layer.act_unit.fill_(clip)
            layer.act_clip.fill_(1.0)
        chosen[name] = clip
    return chosen


def _best_clip(samples: Tensor, largest: float, bits: int, signed: bool) -> float:
    if largest <= 0:
        return 1e-3
    best_clip, best_error = largest, float("inf")
    for fraction in torch.linspace(1.0 / _CANDIDATES, 1.0, _CANDIDATES).tolist():
        clip = torch.tensor(largest * fraction, device=samples.device)
        error = float((fake_quantize(samples, clip, bits, signed) - samples).pow(2).mean())
        if error < best_error:
            best_clip, best_error = largest * fraction, error
    return best_clip
