"""Method comparison at a scale one machine can do: equal budgets, several seeds, mean ± std.

Every method trains the same student from the same teacher, on the same images, for the same
iterations, batch, patch, learning rate and seeds; only the objective differs. The final (EMA)
student of each run is evaluated on Set5 and Set14 with the field's protocol (Y-PSNR/SSIM), and
the table of mean ± sample standard deviation over seeds is printed and written into
docs/results.md (between markers, so other sections of that file are kept) with the exact command.

Runs that already finished in `--output` are read back instead of retrained, and unfinished ones
are resumed, so a long comparison can be stopped and continued.

A method may be named with ` cached` (and a storage precision, `float16` by default): the run
then reads the teacher's outputs from a teacher cache in `--output` (built once, in that
precision) instead of running the teacher, and is compared, paired by seed, with the same method
run online.

    .venv/bin/python benchmarks/distill_small.py --iters 2000 --seeds 0,1,2
    .venv/bin/python benchmarks/distill_small.py --methods scratch,kd,dukd,fitnet,fakd,mkd,dukd+mkd
    .venv/bin/python benchmarks/distill_small.py --train-teacher edsr:num_feat=64,num_block=16
    .venv/bin/python benchmarks/distill_small.py --methods "kd,dukd,kd cached,dukd cached"
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from results_doc import replace_section, shown_command, shown_path

from srcompress import models
from srcompress.data.training import load_training_images
from srcompress.demo import demo_teacher_path
from srcompress.devices import resolve_device
from srcompress.evaluation import evaluate
from srcompress.files import atomic_path
from srcompress.methods import create_method
from srcompress.train.distill import distill
from srcompress.train.loop import Reporter, ValidationResults
from srcompress.train.teacher_cache import DEFAULT_STORAGE, open_teacher_cache

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("Set5", "Set14")


class Heartbeat(Reporter):
    """A line every 10 % (so logs of long runs stay short) and the time of every iteration."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.stamps: list[float] = []
        self.total = 0

    def start(self, total: int, done: int) -> None:
        self.total = total
        self.stamps = [time.perf_counter()]

    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None:
        self.stamps.append(time.perf_counter())
        if iteration % max(1, self.total // 10) == 0:
            loss = " ".join(f"{name} {value:.4f}" for name, value in terms.items())
            print(f"  {self.label} {iteration}/{self.total} {loss}", flush=True)

    def validated(self, iteration: int, results: ValidationResults) -> None:
        shown = " ".join(f"{name} {value['psnr']:.2f}" for name, value in results.items())
        print(f"  {self.label} validation at {iteration}: {shown}", flush=True)

    def seconds_per_iteration(self) -> float | None:
        if len(self.stamps) < 3:
            return None
        timed = self.stamps[1:]  # the first iteration includes start-up
        return (timed[-1] - timed[0]) / (len(timed) - 1)


def teacher_cache(arguments: argparse.Namespace, teacher: Path, storage: str) -> Path:
    """The comparison's teacher cache in `storage` precision, built here the first time (a cache
    made by `distill` itself is float16)."""
    folder = arguments.output / f"cache-{storage}"
    loaded = models.load_model(teacher)
    data = load_training_images(arguments.train_data, loaded.scale, arguments.patch_size)
    open_teacher_cache(folder, loaded.module, loaded.arch, loaded.settings, data,
                       create_method("dukd").cached_parts, arguments.patch_size,
                       resolve_device(arguments.device), storage=storage, message=print)
    return folder


def run_label(arguments: argparse.Namespace, variant: str, iters: int) -> str:
    """The run folder's name without the seed: the variant, and its length if not `--iters`."""
    return variant.replace(" ", "-") + (f"-{iters}iters" if iters != arguments.iters else "")


def run_one(arguments: argparse.Namespace, teacher: Path, variant: str, seed: int,
            iters: int | None = None) -> dict:
    """One run of `variant` ("METHOD" or "METHOD cached [STORAGE]"), read back when finished;
    `iters` other than `--iters` is part of the run's name."""
    method, *cached = variant.split()
    iters = iters or arguments.iters
    folder = arguments.output / f"{run_label(arguments, variant, iters)}-seed{seed}"
    summary_path = folder / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    heartbeat = Heartbeat(f"{folder.name}")
    cache = (teacher_cache(arguments, teacher, cached[1] if len(cached) > 1 else DEFAULT_STORAGE)
             if cached else None)
    result = distill(
        teacher, student=arguments.student, method=method, train_data=arguments.train_data,
        val_benchmarks=list(SETS), data_root=arguments.data_root, iters=iters,
        batch_size=arguments.batch_size, patch_size=arguments.patch_size, lr=arguments.lr,
        schedule=arguments.schedule, seed=seed, workers=arguments.workers,
        val_every=iters, save_every=max(1, iters // 4), output=folder,
        resume=(folder / "checkpoints" / "last.pt").exists(), reporter=heartbeat,
        device=arguments.device, teacher_cache=cache)
    final = result.metrics["validations"][-1]["results"]
    summary = {"method": variant, "seed": seed, "results": final,
               "seconds_per_iter": heartbeat.seconds_per_iteration()}
    with atomic_path(summary_path) as temporary:
        temporary.write_text(json.dumps(summary, indent=2))
    return summary


def train_teacher(arguments: argparse.Namespace) -> Path:
    folder = arguments.output / "teacher"
    if not (folder / "student.safetensors").exists():
        iters = arguments.teacher_iters or 4 * arguments.iters
        distill(None, student=arguments.train_teacher, method="scratch", scale=arguments.scale,
                train_data=arguments.train_data, val_benchmarks=list(SETS),
                data_root=arguments.data_root, iters=iters, batch_size=arguments.batch_size,
                patch_size=arguments.patch_size, lr=arguments.lr, schedule=arguments.schedule,
                seed=1000, workers=arguments.workers, val_every=iters,
                save_every=max(1, iters // 8), output=folder, device=arguments.device,
                resume=(folder / "checkpoints" / "last.pt").exists(),
                reporter=Heartbeat("teacher"))
    return folder / "student.safetensors"


def mean_std(values: list[float], digits: int) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def table(arguments: argparse.Namespace, teacher: Path, runs: list[dict]) -> str:
    header = ["method", *(f"{s} {metric}" for s in SETS for metric in ("PSNR", "SSIM")),
              "s/iter"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, model in (("bicubic", "bicubic"), ("teacher", str(teacher))):
        report = evaluate(model, list(SETS), scale=models.load_model(teacher).scale,
                          data_root=arguments.data_root, device=arguments.device)
        by_set = {entry["benchmark"]: entry for entry in report["results"]}
        lines.append("| " + " | ".join([
            f"{label} (reference)",
            *(f"{by_set[s]['psnr']:.2f} | {by_set[s]['ssim']:.4f}" for s in SETS), "-"]) + " |")
    for method in arguments.methods:
        own = [run for run in runs if run["method"] == method]
        times = [run["seconds_per_iter"] for run in own if run["seconds_per_iter"] is not None]
        lines.append("| " + " | ".join([
            method,
            *(mean_std([run["results"][s]["psnr"] for run in own], 2) + " | "
              + mean_std([run["results"][s]["ssim"] for run in own], 4) for s in SETS),
            f"{statistics.mean(times):.3f}" if times else "-"]) + " |")
    return "\n".join(lines)


def paired_differences(arguments: argparse.Namespace, runs: list[dict]) -> str:
    """Per-seed PSNR differences between methods: the seeds share data order and initial
    weights, so their spread is much smaller than the spread of each method over seeds."""
    by_key = {(run["method"], run["seed"]): run for run in runs}
    pairs = [(method, "scratch") for method in arguments.methods
             if method != "scratch" and " " not in method]
    if "dukd" in arguments.methods and "kd" in arguments.methods:
        pairs.append(("dukd", "kd"))
    pairs += [(variant, variant.split()[0]) for variant in arguments.methods if " " in variant]
    lines = []
    for method, baseline in pairs:
        if baseline not in arguments.methods:
            continue
        shown = []
        for name in SETS:
            deltas = [by_key[(method, seed)]["results"][name]["psnr"]
                      - by_key[(baseline, seed)]["results"][name]["psnr"]
                      for seed in arguments.seeds]
            shown.append(f"{name} {mean_std(deltas, 3)} dB "
                         f"({', '.join(f'{delta:+.3f}' for delta in deltas)})")
        lines.append(f"- {method} − {baseline}, per seed: " + "; ".join(shown))
    return "\n".join(lines)


def add_comparison_arguments(parser: argparse.ArgumentParser, iters: int,
                             batch_size: int) -> None:
    """The flags of a method comparison: methods, seeds, the equal training budget, the data."""
    parser.add_argument("--methods", default="scratch,kd,dukd",
                        type=lambda text: [m.strip() for m in text.split(",") if m.strip()])
    parser.add_argument("--seeds", default="0,1,2",
                        type=lambda text: [int(s) for s in text.split(",") if s.strip()])
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-data", type=Path, action="append",
                        default=None, help="default: ../shared/data/train/SunHays80")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA / "benchmarks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=demo_teacher_path(2))
    parser.add_argument("--train-teacher", metavar="SPEC", default=None,
                        help="first train a teacher of this SPEC from scratch on the training "
                        "data (kept in OUTPUT/teacher, reused when present), instead of --teacher")
    parser.add_argument("--teacher-iters", type=int, default=None,
                        help="iterations for --train-teacher (default: 4 x --iters)")
    parser.add_argument("--scale", type=int, default=2, help="scale of --train-teacher")
    parser.add_argument("--student", default=None, help="default: about 1/10 of the teacher")
    add_comparison_arguments(parser, iters=2000, batch_size=16)
    parser.add_argument("--output", type=Path, default=Path("runs/distill_small"))
    parser.add_argument("--results", type=Path, default=Path("docs/results.md"))
    arguments = parser.parse_args()
    arguments.train_data = arguments.train_data or [SHARED_DATA / "train" / "SunHays80"]

    command = shown_command(["python", *sys.argv])
    if arguments.train_teacher:
        arguments.teacher = train_teacher(arguments)
    teacher = models.load_model(arguments.teacher)
    student = arguments.student or models.default_student_spec(teacher)
    arguments.student = student
    runs = []
    for seed in arguments.seeds:
        for method in arguments.methods:
            print(f"{method} seed {seed}", flush=True)
            runs.append(run_one(arguments, arguments.teacher, method, seed))
    markdown = table(arguments, arguments.teacher, runs)
    teacher_name = f"{teacher.arch} {teacher.settings} x{teacher.scale}"
    section = "\n".join([
        "## Distillation at small scale (benchmarks/distill_small.py)", "",
        f"Teacher `{shown_path(arguments.teacher)}` ({teacher_name}, "
        f"{teacher.parameters:,} parameters); "
        f"student `{student}` "
        f"({models.build_model(student, teacher.scale).parameters:,} parameters). Training "
        f"images: {', '.join(shown_path(p) for p in arguments.train_data)}; {arguments.iters} "
        f"iterations, batch {arguments.batch_size}, LR patch {arguments.patch_size}, lr "
        f"{arguments.lr} ({arguments.schedule}), EMA 0.999 with warm-up, seeds "
        f"{', '.join(map(str, arguments.seeds))}; the final EMA student of every run is "
        "evaluated (Y channel, border = scale). Mean ± sample std over seeds; s/iter measured "
        f"on {resolve_device(arguments.device)} with {torch.get_num_threads()} torch threads on a "
        "shared machine.",
        "", markdown, "", "Paired PSNR differences (same seed: same data order and initial "
        "student weights):", "", paired_differences(arguments, runs), "",
        f"Command ({datetime.date.today().isoformat()}):", "", "```", command, "```"])
    print("\n" + markdown + "\n\n" + paired_differences(arguments, runs))
    replace_section(arguments.results, "distill_small", section)
    print(f"\nwrote {arguments.results}")


if __name__ == "__main__":
    main()
