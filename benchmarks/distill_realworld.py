"""Real-world distillation at small scale: scratch, kd and dukd students of a real-world teacher.

Every method trains the same student from the same real-world teacher (made by
examples/train_realworld_teacher.py), on the same photographs degraded on the fly by Real-ESRGAN's
pipeline (`--degradation realesrgan`), with the same iterations, batch, patch, learning rate and
seeds; only the objective differs. The final (EMA) student of each run is scored three ways:

- PSNR/SSIM (Y, border 4) against the ground truth of a synthetic real-world set: Set14's HR
  images degraded once with seed 0 (`srcompress datasets degrade Set14 --seed 0`);
- PSNR to the teacher on the same inputs (`evaluate --reference-model`): how much of the teacher
  the student keeps;
- NIQE (as MATLAB's `niqe`, lower is better) on an LR-only folder: Set5 degraded with seed 1,
  its LR images alone, scored with `evaluate --no-reference` as real photos would be.

The table (mean ± sample std over seeds, with bicubic and the teacher as references) and the
paired per-seed differences are printed and written into docs/results.md with the commands.
Finished runs are read back and unfinished ones resumed, so the comparison can be continued.

    .venv/bin/python examples/train_realworld_teacher.py
    .venv/bin/python benchmarks/distill_realworld.py --iters 1000 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch
from distill_small import Heartbeat, add_comparison_arguments, mean_std
from results_doc import replace_section, shown_command, shown_path

from srcompress import models
from srcompress.data.degradation import resolve_degradation
from srcompress.data.synthetic import degrade_benchmark
from srcompress.devices import resolve_device
from srcompress.evaluation import evaluate
from srcompress.files import atomic_path
from srcompress.train.distill import distill

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCALE = 4
MEASURES = (("psnr", "Set14-RW PSNR", 2), ("ssim", "Set14-RW SSIM", 4),
            ("psnr_to_teacher", "PSNR to teacher", 2), ("niqe", "Set5-RW LR-only NIQE", 3))


def evaluation_sets(arguments: argparse.Namespace) -> tuple[Path, Path]:
    """The synthetic paired set (Set14, seed 0) and the LR-only folder (Set5's LR, seed 1)."""
    degradation = resolve_degradation("realesrgan")
    folders = []
    for name, seed in (("Set14", 0), ("Set5", 1)):
        folder = arguments.output / "sets" / f"{name}-realesrgan-x{SCALE}-seed{seed}"
        if not folder.exists():
            degrade_benchmark(name, degradation, SCALE, seed, data_root=arguments.data_root,
                              output=folder)
        folders.append(folder)
    return folders[0], folders[1] / "LR_realesrgan" / f"X{SCALE}"


def scores(model: str | Path, arguments: argparse.Namespace, paired: Path,
           lr_only: Path) -> dict[str, float | None]:
    with_truth = evaluate(model, [paired], scale=SCALE, device=arguments.device,
                          reference_model=arguments.teacher if model != "bicubic" else None)
    (truth,) = with_truth["results"]
    without = evaluate(model, [lr_only], scale=SCALE, device=arguments.device,
                       no_reference=True)
    return {"psnr": truth["psnr"], "ssim": truth["ssim"],
            "psnr_to_teacher": truth["psnr_to_reference"], "niqe": without["results"][0]["niqe"]}


def run_one(arguments: argparse.Namespace, method: str, seed: int, paired: Path,
            lr_only: Path) -> dict:
    folder = arguments.output / f"{method}-seed{seed}"
    summary_path = folder / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    heartbeat = Heartbeat(f"{method} seed {seed}")
    result = distill(
        arguments.teacher, student=arguments.student, method=method, degradation="realesrgan",
        train_data=arguments.train_data, val_benchmarks=[], iters=arguments.iters,
        batch_size=arguments.batch_size, patch_size=arguments.patch_size, lr=arguments.lr,
        schedule=arguments.schedule, seed=seed, workers=arguments.workers,
        save_every=max(1, arguments.iters // 4), output=folder,
        resume=(folder / "checkpoints" / "last.pt").exists(), reporter=heartbeat,
        device=arguments.device)
    summary = {"method": method, "seed": seed,
               "results": scores(result.student, arguments, paired, lr_only),
               "seconds_per_iter": heartbeat.seconds_per_iteration()}
    with atomic_path(summary_path) as temporary:
        temporary.write_text(json.dumps(summary, indent=2))
    return summary


def table(arguments: argparse.Namespace, runs: list[dict], paired: Path, lr_only: Path) -> str:
    header = ["method", *(label for _, label, _ in MEASURES), "s/iter"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, model in (("bicubic", "bicubic"), ("teacher", arguments.teacher)):
        measured = scores(model, arguments, paired, lr_only)
        lines.append("| " + " | ".join([f"{label} (reference)", *(
            "-" if measured[key] is None else f"{measured[key]:.{digits}f}"
            for key, _, digits in MEASURES), "-"]) + " |")
    for method in arguments.methods:
        own = [run for run in runs if run["method"] == method]
        times = [run["seconds_per_iter"] for run in own if run["seconds_per_iter"] is not None]
        lines.append("| " + " | ".join([method, *(
            mean_std([run["results"][key] for run in own], digits)
            for key, _, digits in MEASURES),
            f"{statistics.mean(times):.3f}" if times else "-"]) + " |")
    return "\n".join(lines)


def paired_differences(arguments: argparse.Namespace, runs: list[dict]) -> str:
    """Per-seed differences: the seeds share data order, degradations and initial weights."""
    by_key = {(run["method"], run["seed"]): run for run in runs}
    pairs = [(a, b) for a, b in (("kd", "scratch"), ("dukd", "scratch"), ("dukd", "kd"))
             if a in arguments.methods and b in arguments.methods]
    lines = []
    for method, baseline in pairs:
        shown = []
        for key, label, digits in MEASURES:
            deltas = [by_key[(method, seed)]["results"][key]
                      - by_key[(baseline, seed)]["results"][key] for seed in arguments.seeds]
            shown.append(f"{label} {mean_std(deltas, digits + 1)} "
                         f"({', '.join(f'{delta:+.{digits + 1}f}' for delta in deltas)})")
        lines.append(f"- {method} − {baseline}, per seed: " + "; ".join(shown))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path,
                        default=Path("runs/realworld/teacher/student.safetensors"),
                        help="a real-world teacher (examples/train_realworld_teacher.py)")
    parser.add_argument("--student", default=None, help="default: the teacher's default student")
    add_comparison_arguments(parser, iters=1000, batch_size=8)
    parser.add_argument("--output", type=Path, default=Path("runs/distill_realworld"))
    parser.add_argument("--results", type=Path, default=Path("docs/results.md"))
    arguments = parser.parse_args()
    arguments.train_data = arguments.train_data or [SHARED_DATA / "train" / "SunHays80"]
    if not arguments.teacher.is_file():
        sys.exit(f"{arguments.teacher} does not exist: train it first with "
                 "examples/train_realworld_teacher.py, or pass --teacher.")

    command = shown_command(["python", *sys.argv])
    teacher = models.load_model(arguments.teacher)
    arguments.student = arguments.student or models.default_student_spec(teacher)
    paired, lr_only = evaluation_sets(arguments)
    runs = []
    for seed in arguments.seeds:
        for method in arguments.methods:
            print(f"{method} seed {seed}", flush=True)
            runs.append(run_one(arguments, method, seed, paired, lr_only))
    markdown = table(arguments, runs, paired, lr_only)
    differences = paired_differences(arguments, runs)
    student = models.build_model(arguments.student, SCALE)
    section = "\n".join([
        "## Real-world distillation at small scale (benchmarks/distill_realworld.py)", "",
        f"Teacher `{shown_path(arguments.teacher)}` ({teacher.arch} "
        f"{', '.join(f'{key}={value}' for key, value in teacher.settings.items())} x{SCALE}, "
        f"{teacher.parameters:,} parameters; {models.model_task(teacher).describe()}), trained "
        "by examples/train_realworld_teacher.py; student "
        f"`{arguments.student}` ({student.parameters:,} parameters). Training images: "
        f"{', '.join(shown_path(path) for path in arguments.train_data)}, degraded on the fly by "
        f"`--degradation realesrgan`; {arguments.iters} iterations, batch "
        f"{arguments.batch_size}, LR patch {arguments.patch_size}, lr {arguments.lr} "
        f"({arguments.schedule}), EMA 0.999 with warm-up, seeds "
        f"{', '.join(map(str, arguments.seeds))}; method defaults (kd w_rec 1, dukd w_rec 5). "
        "Set14-RW: Set14 degraded once with seed 0 (PSNR/SSIM to its ground truth, Y, border "
        "4; PSNR to the teacher's outputs on the same inputs); Set5-RW LR-only: Set5 degraded "
        "with seed 1, its LR images scored by NIQE alone (lower is better). Mean ± sample std "
        f"over seeds; s/iter on {resolve_device(arguments.device)} with "
        f"{torch.get_num_threads()} torch threads on a shared machine.",
        "", markdown, "", "Paired differences (same seed: same data order, degradations and "
        "initial student weights):", "", differences, "",
        f"Commands ({datetime.date.today().isoformat()}):", "", "```",
        "python examples/train_realworld_teacher.py", command, "```"])
    print("\n" + markdown + "\n\n" + differences)
    replace_section(arguments.results, "distill_realworld", section)
    print(f"\nwrote {arguments.results}")


if __name__ == "__main__":
    main()
