"""The flags that `srcompress distill` and `srcompress quantize` share, defined once so that the two
training commands cannot drift apart.

A training command declares only its own arguments, then `*, json_path` and `**flags`;
`add_training_flags` gives it the shared training flags (listed before --json in --help) and one
flag per method option (after it), and `training_arguments` turns the values Typer passes in
`**flags` into the keyword arguments of `distill()`/`quantize()`.

Every option of every training method gets its own flag (`--w-rec`, `--n-sub`, `--zoom-out/
--no-zoom-out`, ...), generated from the method registry's declared options, so a method added to
the registry is configurable from the command line without touching the commands. A flag left out
keeps the method's default (or the value from `--config`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from srcompress.cli.common import console
from srcompress.errors import UserInputError
from srcompress.methods import method_options
from srcompress.quant.qat import QuantizeResult
from srcompress.train.distill import DistillResult

METHOD_PANEL = "Method options (a flag applies to the methods named in its help)"

# Training flags whose value goes to the library unchanged, under the same name.
_PASSED_AS_IS = ("train_data", "val_every", "data_root", "scale", "iters", "batch_size",
                 "patch_size", "lr", "schedule", "gamma", "grad_clip", "seed", "device", "amp",
                 "ema", "workers", "config", "output", "save_every", "log_every", "resume")


def training_parameters(*, scale_help: str, iters_help: str, ema_help: str,
                        output_help: str) -> list[inspect.Parameter]:
    """The shared training flags, in --help order; the four texts differ between the commands
    (what the scale and output default to, how long a run is, what the EMA averages)."""
    flags: dict[str, tuple[Any, Any]] = {
        "train_data": (list[Path] | None, typer.Option(
            None, "--train-data", metavar="DIR",
            help="Folder of HR images, or HR/ + LR_bicubic/X<s>/ (repeatable; default: the demo "
            "images shipped with srcompress).")),
        "val_benchmark": (list[str] | None, typer.Option(
            None, "--val-benchmark", metavar="NAME",
            help="Validation benchmark name or folder (repeatable; default: Set5).")),
        "no_validation": (bool, typer.Option(
            False, "--no-validation", help="Train without validating (no best.safetensors).")),
        "val_every": (int | None, typer.Option(
            None, "--val-every", help="Iterations between validations (default: 5000, and at the "
            "end).")),
        "data_root": (Path | None, typer.Option(
            None, "--data-root", help="Where benchmarks live (default: $SRCOMPRESS_DATA, else "
            "~/.cache/srcompress/datasets).")),
        "scale": (int | None, typer.Option(None, "--scale", help=scale_help)),
        "iters": (int | None, typer.Option(None, "--iters", help=iters_help)),
        "batch_size": (int | None, typer.Option(
            None, "--batch-size", help="Patches per iteration and process (default: 16).")),
        "patch_size": (int | None, typer.Option(
            None, "--patch-size", help="LR patch side in pixels (default: 48).")),
        "lr": (float | None, typer.Option(
            None, "--lr", help="Adam learning rate (default: 1e-4).")),
        "schedule": (str | None, typer.Option(
            None, "--schedule", help="multistep (x gamma at each milestone) or cosine "
            "(default: multistep).")),
        "milestones": (str | None, typer.Option(
            None, "--milestones", metavar="F,F",
            help="Multistep milestones as fractions of --iters (default: 0.4,0.8).")),
        "gamma": (float | None, typer.Option(
            None, "--gamma", help="Multistep factor (default: 0.1).")),
        "grad_clip": (float | None, typer.Option(
            None, "--grad-clip", help="Clip the gradient norm to this value, 0 = off "
            "(default: 0).")),
        "seed": (int | None, typer.Option(None, "--seed", help="Random seed (default: 0).")),
        "device": (str | None, typer.Option(
            None, "--device", help="auto, cpu, cuda or cuda:N (default: auto).")),
        "amp": (bool | None, typer.Option(
            None, "--amp/--no-amp", help="bf16/fp16 mixed precision on CUDA (default: on).")),
        "ema": (float | None, typer.Option(None, "--ema", help=ema_help)),
        "workers": (int | None, typer.Option(
            None, "--workers", help="Data loader processes (default: 2).")),
        "config": (Path | None, typer.Option(
            None, "--config", help="TOML file with the same keys (flags win); a run's "
            "config.toml repeats it.")),
        "output": (Path | None, typer.Option(None, "--output", help=output_help)),
        "save_every": (int | None, typer.Option(
            None, "--save-every", help="Iterations between resumable checkpoints "
            "(default: 1000).")),
        "log_every": (int | None, typer.Option(
            None, "--log-every", help="Iterations between loss entries in metrics.json "
            "(default: 100).")),
        "resume": (bool, typer.Option(
            False, "--resume", help="Continue the run in --output from its last checkpoint.")),
    }
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                              default=option) for name, (kind, option) in flags.items()]


def method_parameters(methods: Mapping[str, str]) -> list[inspect.Parameter]:
    """One flag per method option name, shared by the methods that declare it.

    `methods` maps the name a command shows for a method to its registry name (quantize shows
    the scratch method as `none`).
    """
    declared: dict[str, tuple[type, dict[str, Any], str]] = {}
    for label, name in methods.items():
        for option, description in method_options(name).items():
            kind, defaults, text = declared.get(option, (description.type, {}, description.help))
            defaults[label] = description.default
            declared[option] = (kind, defaults, text)
    parameters = []
    for option, (kind, defaults, text) in declared.items():
        flag = "--" + option.replace("_", "-")
        flags = f"{flag}/--no-{option.replace('_', '-')}" if kind is bool else flag
        by_method = ", ".join(f"{method} {value}" for method, value in defaults.items())
        parameters.append(inspect.Parameter(
            option, inspect.Parameter.KEYWORD_ONLY, annotation=kind | None,
            default=typer.Option(None, flags, help=f"{text} (default: {by_method})",
                                 rich_help_panel=METHOD_PANEL, show_default=False)))
    return parameters


def add_training_flags(command: Callable[..., None], training: list[inspect.Parameter],
                       methods: list[inspect.Parameter]) -> Callable[..., None]:
    """Gives `command` (whose own parameters end with `*, json_path, **flags`) the `training`
    flags before --json and the `methods` flags after it, the order --help lists them in.

    Typer reads a command's flags from its signature, so the generated flags are added there;
    their values reach the command in `**flags`.
    """
    signature = inspect.signature(command)
    own = [parameter for parameter in signature.parameters.values()
           if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
    before_json = [parameter for parameter in own if parameter.name != "json_path"]
    json_path = signature.parameters["json_path"]
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*before_json, *training, json_path, *methods])
    return command


def training_arguments(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The library's keyword arguments for the shared training flags and method-option flags in
    `flags` (None for what was left out, so that `--config` or the defaults decide)."""
    values = dict(flags)
    no_validation, val_benchmark = values.pop("no_validation"), values.pop("val_benchmark")
    if no_validation and val_benchmark:
        raise UserInputError("--no-validation and --val-benchmark contradict each other: "
                             "keep one.")
    milestones = values.pop("milestones")
    arguments = {name: values.pop(name) for name in _PASSED_AS_IS}
    chosen_options = {key: value for key, value in values.items() if value is not None}
    return {**arguments, "val_benchmarks": [] if no_validation else val_benchmark or None,
            "milestones": milestone_fractions(milestones),
            "method_options": chosen_options or None}


def milestone_fractions(text: str | None) -> list[float] | None:
    """`--milestones 0.4,0.8` as numbers; the library checks their range."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"--milestones must be comma-separated fractions such as 0.4,0.8, "
                             f"got {text!r}.") from None


def print_outcome(result: DistillResult | QuantizeResult, weights_label: str,
                  weights: Path) -> None:
    """How to continue a stopped run; for a finished one its validations and where its final
    (`weights`) and best weights are."""
    if not result.completed:
        console.print(f"[yellow]Stopped at iteration {result.metrics['iteration']}[/]; the "
                      f"checkpoint is saved: continue with --output {result.output} --resume.")
        return
    _print_validations(result.metrics)
    width = len(weights_label) + 1
    console.print(f"{weights_label + ':':<{width}} [bold]{weights}[/]")
    if result.best is not None:
        console.print(f"{'Best:':<{width}} {result.best}")


def _print_validations(metrics: Mapping[str, Any]) -> None:
    """The final and the best validation of a finished run, side by side, if it validated."""
    validations = metrics["validations"]
    if not validations:
        return
    last, best = validations[-1], metrics["best"]
    table = Table(title="Validation (Y-PSNR / SSIM)")
    table.add_column("benchmark")
    table.add_column(f"final (iter {last['iteration']})", justify="right")
    table.add_column(f"best (iter {best['iteration']})", justify="right")
    for name, final in last["results"].items():
        top = best["results"][name]
        table.add_row(name, f"{final['psnr']:.2f} dB / {final['ssim']:.4f}",
                      f"{top['psnr']:.2f} dB / {top['ssim']:.4f}")
    console.print(table)
