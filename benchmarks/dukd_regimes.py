"""When does DUKD pay? dukd − kd (paired by seed) across training regimes, at a budget one shared
machine can do.

DUKD's upcycled inputs (zoom-in HR tiles, zoom-out LR) are only useful where the teacher knows
more than the ground truth already tells the student. Two things might decide that: how often the
student sees each LR pixel (passes per LR pixel = iterations × batch × patch² / LR pixels of the
training set; the paper's budget is about 17 at x2 and 67 at x4), and whether the teacher was
trained on the student's images or on a larger set. Each regime fixes both; in each one the same
student (the teacher's default student) is trained with kd and dukd for the same iterations and
seeds, evaluated on Set5 and Set14 (Y-PSNR, final EMA weights), and the per-seed differences
dukd − kd are reported with their spread. Variants:

- `equal-iters`: dukd and kd with the same iterations (the paper's comparison);
- `equal-time`: kd given `--time-ratio` times the iterations (dukd's measured cost per iteration
  over kd's, `benchmarks/bench_distill.py`), i.e. the same wall-clock time;
- `cached`: dukd and kd both reading the teacher-output cache (`--teacher-cache`), kd again with
  `--cached-time-ratio` times the iterations, so equal wall-clock time with the cache.

The teacher "larger" is trained here from scratch (edsr 32x4, like the demo teacher, with the
demo teacher's recipe) on the 80 photographs plus the 3 demo images, so it has seen the demo
images among many others; "own" is the shipped demo teacher, trained on exactly the 3 demo
images; "foreign" is the demo teacher on photographs it has never seen. Finished runs are read
back from `--output`, so the study can be stopped and continued; the table, the plot and the
command are written into docs/results.md and docs/dukd_regimes.png.

    .venv/bin/python benchmarks/dukd_regimes.py --output runs/dukd_regimes
    .venv/bin/python benchmarks/dukd_regimes.py --variants equal-iters --regimes own-17,own-4
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from distill_small import SETS, SHARED_DATA, Heartbeat, run_label, run_one
from results_doc import replace_section, shown_command

from srcompress import models
from srcompress.data.training import load_training_images
from srcompress.demo import demo_data_folder, demo_teacher_path
from srcompress.files import atomic_path
from srcompress.train.distill import distill

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPOSITORY = Path(__file__).resolve().parents[1]
PHOTOS = SHARED_DATA / "train" / "SunHays80"
TEACHER_SPEC = "edsr:num_feat=32,num_block=4"


@dataclass(frozen=True)
class Regime:
    name: str
    data: str  # "demo" or "photos"
    teacher: str  # "own" (demo teacher), "larger" (trained on photos + demo), "foreign"
    iters: int
    meaning: str


REGIMES = (
    Regime("own-4", "demo", "own", 100, "demo images, teacher trained on exactly them"),
    Regime("own-17", "demo", "own", 400, "demo images, teacher trained on exactly them"),
    Regime("larger-17", "demo", "larger", 400, "demo images, teacher trained on them + 80 photos"),
    Regime("larger-0.2", "photos", "larger", 400, "80 photos, teacher trained on them + 3 demo"),
    Regime("foreign-0.2", "photos", "foreign", 400, "80 photos, teacher trained on 3 other images"),
    Regime("own-69", "demo", "own", 1600, "demo images, teacher trained on exactly them"),
)
VARIANTS = ("equal-iters", "equal-time", "cached")


def data_folders(regime: Regime) -> list[Path]:
    return [demo_data_folder()] if regime.data == "demo" else [PHOTOS]


def train_larger_teacher(arguments: argparse.Namespace) -> Path:
    """edsr 32x4 from scratch on the photos and the demo images, the demo teacher's recipe."""
    folder = arguments.output / "teacher-larger"
    if not (folder / "student.safetensors").exists():
        distill(None, student=TEACHER_SPEC, method="scratch", scale=2,
                train_data=[PHOTOS, demo_data_folder()], val_benchmarks=list(SETS),
                data_root=arguments.data_root, iters=arguments.teacher_iters, batch_size=16,
                patch_size=32, lr=5e-4, schedule="cosine", seed=1000, workers=arguments.workers,
                val_every=arguments.teacher_iters, save_every=max(1, arguments.teacher_iters // 8),
                output=folder, device="cpu",
                resume=(folder / "checkpoints" / "last.pt").exists(),
                reporter=Heartbeat("teacher-larger"))
    return folder / "student.safetensors"


def passes_per_lr_pixel(regime: Regime, iters: int, arguments: argparse.Namespace) -> float:
    """iterations × batch × patch² / LR pixels of the training images (as `distill` says it)."""
    data = load_training_images(data_folders(regime), 2, arguments.patch_size)
    pixels = sum(image.lr.shape[1] * image.lr.shape[2] for image in data.images)
    return iters * arguments.batch_size * arguments.patch_size**2 / pixels


def regime_arguments(arguments: argparse.Namespace, regime: Regime) -> argparse.Namespace:
    """The `distill_small.run_one` settings of one regime: its own folder, data and length.

    The regime `foreign-0.2` is exactly distill_small's default comparison, so pointing
    distill_small's `--output` at that regime's folder shares its runs.
    """
    return argparse.Namespace(**{
        **vars(arguments), "output": arguments.output / regime.name, "iters": regime.iters,
        "train_data": data_folders(regime), "schedule": "cosine", "device": "cpu",
        "student": None})


def comparisons(arguments: argparse.Namespace,
                regime: Regime) -> dict[str, tuple[tuple[str, int], tuple[str, int]]]:
    """variant → ((variant, iters) of dukd, (variant, iters) of its kd anchor)."""
    n = regime.iters
    pairs = {"equal-iters": (("dukd", n), ("kd", n)),
             "equal-time": (("dukd", n), ("kd", round(n * arguments.time_ratio))),
             "cached": (("dukd cached", n),
                        ("kd cached", round(n * arguments.cached_time_ratio)))}
    return {variant: pairs[variant] for variant in arguments.variants}


def differences(arguments: argparse.Namespace, regime: Regime, teacher: Path,
                variant: str) -> dict[str, list[float]]:
    """Per-seed dukd − kd PSNR on each set."""
    (first, first_iters), (second, second_iters) = comparisons(arguments, regime)[variant]
    settings = regime_arguments(arguments, regime)
    settings.student = models.default_student_spec(models.load_model(teacher))
    deltas: dict[str, list[float]] = {name: [] for name in SETS}
    for seed in arguments.seeds:
        if arguments.report_only and not all(
                (settings.output / f"{label}-seed{seed}" / "summary.json").exists()
                for label in (run_label(settings, first, first_iters),
                              run_label(settings, second, second_iters))):
            continue
        ours = run_one(settings, teacher, first, seed, first_iters)
        anchor = run_one(settings, teacher, second, seed, second_iters)
        for name in SETS:
            deltas[name].append(ours["results"][name]["psnr"] - anchor["results"][name]["psnr"])
    return deltas


def teacher_path(arguments: argparse.Namespace, regime: Regime) -> Path:
    return arguments.larger_teacher if regime.teacher == "larger" else demo_teacher_path(2)


def summary_line(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    mean = statistics.mean(values)
    verdict = "tie" if abs(mean) <= spread or all(v == 0 for v in values) else (
        "dukd" if mean > 0 else "kd")
    return (f"{mean:+.3f} ± {spread:.3f} ({', '.join(f'{v:+.3f}' for v in values)}) "
            f"{verdict}")


def plot(path: Path, points: list[tuple[Regime, float, str, list[float]]]) -> None:
    """dukd − kd (mean of Set5 and Set14, ± seed spread) against passes per LR pixel."""
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=120)
    markers = {"own": "o", "larger": "s", "foreign": "^"}
    colours = {"equal-iters": "tab:blue", "equal-time": "tab:orange", "cached": "tab:green"}
    seen = set()
    for regime, passes, variant, values in points:
        label = f"{variant}, teacher {regime.teacher}"
        axis.errorbar(passes, statistics.mean(values),
                      yerr=statistics.stdev(values) if len(values) > 1 else 0,
                      marker=markers[regime.teacher], color=colours[variant], capsize=3,
                      linestyle="none", label=None if label in seen else label)
        seen.add(label)
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("passes per LR pixel (iterations × batch × patch² / training LR pixels)")
    axis.set_ylabel("dukd − kd, dB (Set5/Set14 mean, paired)")
    axis.set_title("When DUKD pays: x2, edsr 32x4 teacher → 16x2 student, 3 seeds")
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", default=",".join(r.name for r in REGIMES),
                        type=lambda text: [r.strip() for r in text.split(",") if r.strip()])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        type=lambda text: [v.strip() for v in text.split(",") if v.strip()])
    parser.add_argument("--seeds", default="0,1,2",
                        type=lambda text: [int(s) for s in text.split(",") if s.strip()])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--teacher-iters", type=int, default=3000,
                        help="iterations of the 'larger' teacher (the demo teacher had 3000)")
    parser.add_argument("--time-ratio", type=float, default=2.0,
                        help="dukd s/iter over kd s/iter (bench_distill.py, small pair)")
    parser.add_argument("--cached-time-ratio", type=float, default=2.0,
                        help="the same ratio with both reading the teacher cache")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate the seeds whose runs have finished")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA / "benchmarks")
    parser.add_argument("--output", type=Path, default=Path("runs/dukd_regimes"))
    parser.add_argument("--results", type=Path, default=REPOSITORY / "docs" / "results.md")
    parser.add_argument("--plot", type=Path, default=REPOSITORY / "docs" / "dukd_regimes.png")
    arguments = parser.parse_args()
    by_name = {regime.name: regime for regime in REGIMES}
    unknown = sorted(set(arguments.regimes) - set(by_name)) + sorted(
        set(arguments.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown regime or variant {unknown[0]}")
    command = shown_command(["python", *sys.argv])

    arguments.larger_teacher = None
    if any(by_name[name].teacher == "larger" for name in arguments.regimes):
        arguments.larger_teacher = train_larger_teacher(arguments)
    lines = ["| regime | training images | teacher trained on | iterations | passes per LR pixel "
             "| variant | dukd − kd Set5 dB | dukd − kd Set14 dB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    points = []
    for variant in arguments.variants:
        for name in arguments.regimes:
            regime = by_name[name]
            teacher = teacher_path(arguments, regime)
            deltas = differences(arguments, regime, teacher, variant)
            if not deltas["Set5"]:
                continue
            passes = passes_per_lr_pixel(regime, regime.iters, arguments)
            images = "3 demo images" if regime.data == "demo" else "80 photos"
            lines.append(f"| {name} | {images} | {regime.meaning.split(', ')[1]} | "
                         f"{regime.iters} | {passes:.2f} | {variant} | "
                         f"{summary_line(deltas['Set5'])} | {summary_line(deltas['Set14'])} |")
            mean_of_sets = [(a + b) / 2 for a, b in zip(deltas["Set5"], deltas["Set14"],
                                                         strict=True)]
            points.append((regime, passes, variant, mean_of_sets))
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    plot(arguments.plot, points)
    student = models.default_student_spec(models.load_model(demo_teacher_path(2)))
    section = "\n".join([
        "## When DUKD pays (benchmarks/dukd_regimes.py)", "",
        f"x2, teacher edsr 32x4 (demo teacher, or the same architecture trained here for "
        f"{arguments.teacher_iters} iterations on the 80 photos + 3 demo images), student "
        f"`{student}`, batch {arguments.batch_size}, LR patch {arguments.patch_size}, lr "
        f"{arguments.lr} cosine, seeds {', '.join(map(str, arguments.seeds))}; each cell is the "
        "per-seed paired difference dukd − kd in Y-PSNR (mean ± sample std, the three seeds), "
        "then `tie` when the mean is within one spread of zero. equal-time gives kd "
        f"{arguments.time_ratio}× the iterations, cached {arguments.cached_time_ratio}×.", "",
        table, "", f"![dukd − kd against passes per LR pixel]({arguments.plot.name})", "",
        *([] if arguments.report_only else [
            f"Command ({datetime.date.today().isoformat()}):", "", "```", command, "```"])])
    replace_section(arguments.results, "dukd_regimes", section)
    print(f"\n{table}\n\nwrote {arguments.results} and {arguments.plot}")


if __name__ == "__main__":
    main()
