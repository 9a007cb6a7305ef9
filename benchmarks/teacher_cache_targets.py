"""What the teacher cache changes in the targets, and why its files are NumPy memory maps.

1. Whole-image context: the cached target of a patch is the teacher's output on the whole image,
   cut to the patch; online, the teacher sees the patch alone, zero-padded at its border. Measured
   on un-flipped patches: PSNR of one target against the other, over the whole patch, its border
   ring and its interior.
2. Flips: the cache flips the teacher's output as the patch was flipped; online, the teacher runs
   on the flipped patch. Measured as PSNR between T(flip(x)) and flip(T(x)) on whole images.
3. Storage: PSNR of float16 and bfloat16 targets against float32 ones.
4. Reading: time to cut one batch of targets from a float16 file, NumPy memory map against
   safetensors' `safe_open(...).get_slice` (also memory-mapped), interleaved, median of rounds.

    .venv/bin/python benchmarks/teacher_cache_targets.py --train-data ../shared/data/train/SunHays80
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from srcompress import models
from srcompress.data.training import PatchBatches, augment, load_training_images
from srcompress.demo import demo_data_folder, demo_teacher_path


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=demo_teacher_path(2))
    parser.add_argument("--train-data", type=Path, default=demo_data_folder())
    parser.add_argument("--images", type=int, default=8, help="first N training images")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--patches", type=int, default=256)
    parser.add_argument("--border", type=int, default=4, help="SR pixels counted as border")
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    torch.set_grad_enabled(False)
    teacher = models.load_model(arguments.teacher)
    net, scale = teacher.module.eval(), teacher.scale
    p, ring = arguments.patch_size, arguments.border
    data = load_training_images([arguments.train_data], scale, p)
    data.images = data.images[:arguments.images]
    outputs = [net(image.lr.float()[None] / 255)[0] for image in data.images]

    lr, _, placements = PatchBatches(data, p, arguments.patches, seed=0, augment=False)[0]
    cached = torch.stack([outputs[i][:, scale * t:scale * (t + p), scale * x:scale * (x + p)]
                          for i, t, x, _ in placements.tolist()])
    alone = torch.cat([net(chunk) for chunk in lr.split(32)])
    inner = (..., slice(ring, -ring), slice(ring, -ring))
    mask = torch.ones_like(cached[0, 0], dtype=torch.bool)
    mask[ring:-ring, ring:-ring] = False
    print(f"teacher {arguments.teacher.name} x{scale}, {len(data.images)} images of "
          f"{arguments.train_data.name}, {arguments.patches} patches of {p} LR pixels")
    print(f"1. whole-image vs patch-alone target: PSNR {psnr(cached, alone):.2f} dB over the "
          f"patch, {psnr(cached[..., mask], alone[..., mask]):.2f} dB on its {ring}-pixel border, "
          f"{psnr(cached[inner], alone[inner]):.2f} dB inside; max |difference| inside "
          f"{float((cached[inner] - alone[inner]).abs().max()):.2e}")
    flipped = [psnr(net(augment(image.lr.float()[None] / 255, flips))[0],
                    augment(output, flips))
               for image, output in zip(data.images, outputs, strict=True)
               for flips in range(1, 8)]
    print(f"2. T(flip(x)) vs flip(T(x)) on whole images: PSNR median "
          f"{statistics.median(flipped):.2f} dB (min {min(flipped):.2f}, max {max(flipped):.2f})")
    print(f"3. storage: float16 {psnr(cached.half().float(), cached):.2f} dB, bfloat16 "
          f"{psnr(cached.bfloat16().float(), cached):.2f} dB against float32 targets")

    with tempfile.TemporaryDirectory() as folder:
        zoom_in = [net(image.hr.float()[None] / 255)[0].half() for image in data.images]
        flat = np.concatenate([output.reshape(-1).numpy() for output in zoom_in])
        np.save(Path(folder) / "zoom_in.npy", flat)
        save_file({str(i): output.contiguous() for i, output in enumerate(zoom_in)},
                  str(Path(folder) / "zoom_in.safetensors"))
        offsets = np.cumsum([0] + [output.numel() for output in zoom_in])
        memmap = np.load(Path(folder) / "zoom_in.npy", mmap_mode="r")
        size = scale * p
        wanted = [(i, scale * scale * t, scale * scale * x) for i, t, x, _ in
                  placements[:16].tolist()]

        def with_numpy() -> torch.Tensor:
            return torch.stack([torch.from_numpy(np.ascontiguousarray(
                memmap[offsets[i]:offsets[i + 1]].reshape(zoom_in[i].shape)[
                    :, t:t + size, x:x + size])) for i, t, x in wanted])

        handle = safe_open(str(Path(folder) / "zoom_in.safetensors"), "pt")

        def with_safetensors() -> torch.Tensor:
            return torch.stack([handle.get_slice(str(i))[:, t:t + size, x:x + size]
                                for i, t, x in wanted])

        assert torch.equal(with_numpy(), with_safetensors())
        times: dict[str, list[float]] = {"numpy memmap": [], "safetensors get_slice": []}
        for _ in range(arguments.rounds):
            for name, read in (("numpy memmap", with_numpy),
                               ("safetensors get_slice", with_safetensors)):
                started = time.perf_counter()
                for _ in range(20):
                    read()
                times[name].append((time.perf_counter() - started) / 20)
        shown = ", ".join(f"{name} {statistics.median(values) * 1e3:.3f} ms"
                          for name, values in times.items())
        print(f"4. reading 16 zoom-in targets of {size}x{size} (float16), median of "
              f"{arguments.rounds} interleaved rounds: {shown}")


if __name__ == "__main__":
    main()
