"""QAT's defaults chosen by measurement: how far short QAT runs end from their PTQ starting point.

A user who runs `srcompress quantize` on a trained model must never get a model worse than
calibration alone would have given. For each bit-width, seed, budget and candidate setting this
script runs QAT of a converged float model, evaluates the final `quantized.safetensors` on
Set5/Set14, and reports the paired difference to the calibrated starting point of the same seed
(the same calibration batches): mean ± standard deviation over seeds and the worst seed.

Candidates are `NAME:key=value,...` with the keys of `quantize()` (`lr`, `ema`, `schedule`,
`trainable`, ...); give every key that matters explicitly, so that a logged result does not
depend on the defaults of the day. Every finished run is appended to `--log` (JSON lines) and
skipped when the script runs again, so a long measurement can be stopped and continued.

    .venv/bin/python benchmarks/qat_defaults.py runs/small_teacher_x2.safetensors \\
        --train-data ../shared/data/train/SunHays80 --bits 8,4,2 --iters 20,100,400 \\
        --seeds 0,1,2 --log runs/qat_defaults/small_teacher.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srcompress.demo import demo_data_folder
from srcompress.evaluation import evaluate
from srcompress.train.quantize import quantize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = ROOT.parent / "shared" / "data" / "benchmarks"
DEFAULT_CANDIDATES = ("lr1e-4:lr=1e-4", "lr1e-5:lr=1e-5", "lr1e-5-noema:lr=1e-5,ema=0")


def parse_candidate(text: str) -> tuple[str, dict[str, Any]]:
    name, _, settings = text.partition(":")
    values: dict[str, Any] = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        values[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return name, values


def scores(model: object, args: argparse.Namespace) -> dict[str, float]:
    report = evaluate(model, benchmarks=args.benchmarks, data_root=args.data_root, device="cpu")
    return {result["benchmark"]: result["psnr"] for result in report["results"]}


def measure(args: argparse.Namespace, bits: int, seed: int, iters: int,
            settings: dict[str, Any]) -> dict[str, float]:
    """PSNR after one `quantize` run. With `iters` 0 it is exactly the model a QAT run of the
    same seed starts from (the same calibration batches and random draws)."""
    with tempfile.TemporaryDirectory(prefix="qat-defaults-") as folder:
        result = quantize(args.model, w_bits=bits, a_bits=bits, iters=iters,
                          batch_size=args.batch_size, patch_size=args.patch_size, seed=seed,
                          calibration_batches=args.calibration_batches,
                          train_data=args.train_data, val_benchmarks=[], device="cpu",
                          workers=0, save_every=max(iters, 1), output=Path(folder) / "run",
                          **{"method": args.method, **settings})
        if not result.completed:
            raise SystemExit("stopped: run the same command again to continue")
        return scores(str(result.quantized), args)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def measurements(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Every (bits, seed, start or candidate x iters) not yet in the log, measured."""
    done = {(entry["bits"], entry["seed"], entry["candidate"], entry["iters"])
            for entry in read_log(args.log)}
    candidates = dict(parse_candidate(text) for text in args.candidates)
    for seed in args.seeds:  # a first seed of every setting first, then the others
        for bits in args.bits:
            if (bits, seed, "start", 0) not in done:
                yield {"bits": bits, "seed": seed, "candidate": "start", "iters": 0,
                       "psnr": measure(args, bits, seed, 0, {})}
            for iters in args.iters:
                for name, settings in candidates.items():
                    if (bits, seed, name, iters) not in done:
                        yield {"bits": bits, "seed": seed, "candidate": name, "iters": iters,
                               "settings": settings,
                               "psnr": measure(args, bits, seed, iters, settings)}


def summary(entries: list[dict[str, Any]]) -> list[str]:
    """Mean ± std over seeds of (final − start) PSNR, and the worst seed, per benchmark."""
    starts = {(e["bits"], e["seed"]): e["psnr"] for e in entries if e["candidate"] == "start"}
    groups: dict[tuple[int, str, int], list[dict[str, float]]] = {}
    for entry in entries:
        key = (entry["bits"], entry["seed"])
        if entry["candidate"] == "start" or key not in starts:
            continue
        gain = {name: entry["psnr"][name] - starts[key][name] for name in entry["psnr"]}
        groups.setdefault((entry["bits"], entry["candidate"], entry["iters"]), []).append(gain)
    names = sorted({name for entry in entries for name in entry["psnr"]},
                   key=lambda name: (name != "Set5", name))
    lines = ["| bits | candidate | iters | seeds | "
             + " | ".join(f"Δ {name} dB (mean ± sd, worst)" for name in names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for bits in sorted({key[0] for key in starts}, reverse=True):
        values = [s for (b, _), s in starts.items() if b == bits]
        start_cells = [f"{statistics.mean(v[name] for v in values):.3f} (start)"
                       for name in names]
        lines.append(f"| w{bits}a{bits} | PTQ start | 0 | {len(values)} | "
                     f"{' | '.join(start_cells)} |")
        for (group_bits, candidate, iters), gains in sorted(groups.items()):
            if group_bits != bits:
                continue
            cells = []
            for name in names:
                column = [gain[name] for gain in gains if name in gain]
                if not column:
                    cells.append("-")
                    continue
                spread = statistics.stdev(column) if len(column) > 1 else 0.0
                cells.append(f"{statistics.mean(column):+.3f} ± {spread:.3f}, "
                             f"{min(column):+.3f}")
            lines.append(f"| w{bits}a{bits} | {candidate} | {iters} | {len(gains)} | "
                         f"{' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="converged float checkpoint")
    parser.add_argument("--train-data", nargs="+", default=[str(demo_data_folder())])
    parser.add_argument("--bits", type=lambda text: [int(b) for b in text.split(",")],
                        default=[8, 4, 2])
    parser.add_argument("--iters", type=lambda text: [int(i) for i in text.split(",")],
                        default=[20, 100, 400])
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")],
                        default=[0, 1, 2])
    parser.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES))
    parser.add_argument("--method", default="dukd")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=24)
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--benchmarks", type=lambda text: text.split(","),
                        default=["Set5", "Set14"])
    parser.add_argument("--log", type=Path, required=True, help="JSON lines, one per run")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not Path(args.model).is_file():
        parser.error(f"{args.model} does not exist (the small converged teacher is made by "
                     "examples/train_small_teacher.py).")

    args.log.parent.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for entry in measurements(args):
            with args.log.open("a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")
            print(json.dumps(entry), flush=True)
    print("\n".join(summary(read_log(args.log))))


if __name__ == "__main__":
    main()
