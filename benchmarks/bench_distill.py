"""Cost of each training method: seconds per iteration and peak memory, measured in one run.

Variants ending in `cached` read the teacher's outputs from a teacher cache (`--cache`, built
before anything is timed) instead of running the teacher. With `--rounds N` every variant is
measured N times, round-robin (interleaved, so a change in the machine's load hits all of them
alike), and the median of its rounds is reported, with ratios to scratch and to kd. The work
bound of cached DUKD is 1 + n_sub + 1/s² scratch steps: the student sees that many times a
scratch step's pixels and the teacher nothing.

The paper's setting by default: EDSR c256b32 teacher → c64b32 student (res_scale 0.1), x4,
batch 16, LR patch 48, through the real training loop (data, AMP on CUDA, EMA, optimiser). DUKD
should cost about its work ratio times KD, because teacher and student see 1 + n_sub + 1/s²
times KD's pixels (1 + n_sub without zoom-out); anything above that is waste (a teacher graph,
CPU resizing, repeated teacher calls).

Each method runs in its own child process, so peak memory is that method's alone: on CUDA
`torch.cuda.max_memory_allocated`, on CPU the process's peak RSS (`ru_maxrss`), reported with the
RSS the process had before its first iteration (the models and data), whose difference is what
training itself needs.

    .venv/bin/python benchmarks/bench_distill.py        # the paper's pair (minutes per step on CPU)
    .venv/bin/python benchmarks/bench_distill.py --variants scratch,kd,dukd,"dukd two-step"
    .venv/bin/python benchmarks/bench_distill.py --teacher edsr:num_feat=64,num_block=8 \\
        --student edsr:num_feat=16,num_block=8 --batch-size 4 --patch-size 24   # a quick look
    .venv/bin/python benchmarks/bench_distill.py --rounds 3 --cache runs/bench_cache \\
        --variants "scratch,kd,dukd,kd cached,dukd cached"
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from srcompress import models
from srcompress.data.training import PatchBatches, load_training_images
from srcompress.demo import demo_data_folder
from srcompress.devices import resolve_device
from srcompress.methods import create_method
from srcompress.train.distributed import Distributed
from srcompress.train.loop import Reporter, Trainer, TrainSettings
from srcompress.train.teacher_cache import open_teacher_cache

VARIANTS = {
    "scratch": ("scratch", {}),
    "kd": ("kd", {}),
    "dukd": ("dukd", {}),
    "dukd two-step": ("dukd", {"two_step": True}),
    "fitnet": ("fitnet", {}),
    "fakd": ("fakd", {}),
    "mkd": ("mkd", {}),
    "mkd meta-every 4": ("mkd", {"meta_every": 4}),
    "dukd+mkd": ("dukd+mkd", {}),
    "kd cached": ("kd", {}),
    "dukd cached": ("dukd", {}),
}


class IterationClock(Reporter):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())


def rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def open_cache(arguments: argparse.Namespace, method_name: str, device: torch.device) -> object:
    """The benchmark's teacher cache (built on first use) for the parts `method_name` reads."""
    torch.manual_seed(0)
    teacher = models.build_model(arguments.teacher, arguments.scale)
    data = load_training_images(arguments.train_data, arguments.scale, arguments.patch_size)
    return open_teacher_cache(arguments.cache, teacher.module, teacher.arch, teacher.settings,
                              data, create_method(method_name).cached_parts,
                              arguments.patch_size, device,
                              message=lambda text: print(text, file=sys.stderr))


def measure(arguments: argparse.Namespace, variant: str) -> dict[str, float]:
    """One method in this process: seconds per iteration after warm-up, and peak memory."""
    torch.manual_seed(0)
    device = resolve_device(arguments.device)
    teacher = models.build_model(arguments.teacher, arguments.scale).module
    student = models.build_model(arguments.student, arguments.scale).module
    name, options = VARIANTS[variant]
    method = create_method(name, **options)
    data = load_training_images(arguments.train_data, arguments.scale, arguments.patch_size)
    batches = PatchBatches(data, arguments.patch_size, arguments.batch_size, seed=0)
    cached_targets = None
    if variant.endswith("cached"):
        plan = open_cache(arguments, name, device)

        def cached_targets(placements: torch.Tensor) -> object:
            return plan.cache.batch(placements, arguments.patch_size, plan.used, device)

    clock = IterationClock()
    iterations = arguments.warmup + arguments.iters
    trainer = Trainer(student, teacher if method.needs_teacher else None, method, batches,
                      TrainSettings(iters=iterations, lr=1e-4, workers=arguments.workers,
                                    amp=not arguments.no_amp),
                      device, run=None, place=Distributed(), reporter=clock,
                      cached_targets=cached_targets)
    before = current_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    trainer.train()
    stamps = [started, *clock.stamps][arguments.warmup:]
    seconds = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        baseline = 0.0
    else:
        peak, baseline = rss_mib(), before
    return {"seconds_per_iter": seconds, "peak_mib": peak, "baseline_mib": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="edsr:num_feat=256,num_block=32,res_scale=0.1")
    parser.add_argument("--student", default="edsr:num_feat=64,num_block=32,res_scale=0.1")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        type=lambda text: [v.strip() for v in text.split(",") if v.strip()],
                        help="comma-separated subset of: " + ", ".join(VARIANTS)
                        + " (kd is always measured: ratios are to it)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every variant this many times, interleaved; medians")
    parser.add_argument("--train-data", type=Path, action="append", default=None,
                        help="default: the demo images (their content does not change the cost)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="teacher cache folder of the cached variants (built if missing)")
    parser.add_argument("--only", choices=list(VARIANTS), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    arguments.train_data = arguments.train_data or [demo_data_folder()]
    unknown = sorted(set(arguments.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant {unknown[0]}; choose from {', '.join(VARIANTS)}")

    if arguments.only:
        print(json.dumps(measure(arguments, arguments.only)))
        return

    n_sub = create_method("dukd").options.n_sub
    work = 1 + n_sub + 1 / arguments.scale**2
    chosen = [v for v in VARIANTS if v in arguments.variants or v == "kd"]
    if any(variant.endswith("cached") for variant in chosen):
        if arguments.cache is None:
            parser.error("the cached variants need --cache DIR")
        open_cache(arguments, "dukd", resolve_device(arguments.device))  # built before timing
    rounds: dict[str, list[dict[str, float]]] = {variant: [] for variant in chosen}
    for round_number in range(arguments.rounds):
        for variant in chosen:
            child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", variant],
                                   capture_output=True, text=True, check=False)
            if child.returncode != 0:
                sys.exit(f"{variant} failed:\n{child.stderr[-2000:]}")
            rounds[variant].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"round {round_number + 1} {variant}: {rounds[variant][-1]}", file=sys.stderr)
    results = {variant: {key: statistics.median(entry[key] for entry in measured)
                         for key in measured[0]} for variant, measured in rounds.items()}

    kd = results["kd"]
    print(f"\nteacher {arguments.teacher} -> student {arguments.student}, x{arguments.scale}, "
          f"batch {arguments.batch_size}, patch {arguments.patch_size}, {arguments.iters} timed "
          f"iterations after {arguments.warmup} warm-up, median of {arguments.rounds} "
          f"interleaved round(s), device {arguments.device}, torch threads "
          f"{torch.get_num_threads()}\n")
    print("| method | s/iter | ratio to scratch | ratio to kd | work ratio to kd | peak memory MiB "
          "| training memory MiB | memory ratio to kd |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    kd_training = kd["peak_mib"] - kd["baseline_mib"]
    scratch = results.get("scratch")
    for variant, measured in results.items():
        ratio = measured["seconds_per_iter"] / kd["seconds_per_iter"]
        to_scratch = (f"{measured['seconds_per_iter'] / scratch['seconds_per_iter']:.3f}"
                      if scratch else "-")
        expected = f"{work:.3f}" if variant.startswith("dukd") and variant != "dukd cached" else (
            "1" if variant == "kd" else "-")
        training = measured["peak_mib"] - measured["baseline_mib"]
        print(f"| {variant} | {measured['seconds_per_iter']:.3f} | {to_scratch} | {ratio:.3f} | "
              f"{expected} | {measured['peak_mib']:.0f} | {training:.0f} | "
              f"{training / kd_training:.2f} |")
    if "dukd" in results:
        dukd_ratio = results["dukd"]["seconds_per_iter"] / kd["seconds_per_iter"]
        print(f"\ndukd/kd measured {dukd_ratio:.3f} vs work ratio 1 + n_sub + 1/s^2 = {work:.3f} "
              f"({100 * (dukd_ratio / work - 1):+.1f} %)")
    if "dukd cached" in results and scratch:
        cached = results["dukd cached"]["seconds_per_iter"] / scratch["seconds_per_iter"]
        print(f"dukd cached/scratch measured {cached:.3f} vs work bound {work:.3f} "
              f"({cached / work:.2f}x the bound, goal at most 1.3x); dukd cached/kd "
              f"{results['dukd cached']['seconds_per_iter'] / kd['seconds_per_iter']:.3f}")


if __name__ == "__main__":
    main()
