"""The flags and the report that `srcompress distill` and `srcompress quantize` share, made once so
that the two training commands cannot drift apart.

A training command declares only its own arguments, then `*, json_path` and `**flags`;
`add_training_flags` gives it one flag per settings key that declares a help text (from the
command's settings class, `srcompress.train.settings`, listed before --json in --help) and one
flag per method option (after it), and `training_arguments` turns the values Typer passes in
`**flags` into the keyword arguments of `distill()`/`quantize()`. `report_run` prints and writes
the outcome, on rank 0 only under torchrun.

Every option of every training method gets its own flag (`--w-rec`, `--n-sub`, `--zoom-out/
--no-zoom-out`, ...), generated from the method registry's declared options, so a method added to
the registry is configurable from the command line without touching the commands. A flag left out
keeps the method's default (or the value from `--config`).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from srcompress.cli.common import console, emit_json, human_output
from srcompress.errors import UserInputError
from srcompress.methods import method_options
from srcompress.train.distributed import from_environment
from srcompress.train.run import RunResult
from srcompress.train.settings import TrainingSettings

METHOD_PANEL = "Method options (a flag applies to the methods named in its help)"

_NO_VALIDATION = inspect.Parameter(
    "no_validation", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--no-validation", help="Validate on no benchmark: distill then writes no "
        "best.safetensors; quantize validates on fixed patches of the training images instead."))
# Flags that are not settings keys: where the settings come from.
_SOURCE_FLAGS: dict[str, tuple[Any, Any]] = {
    "config": (Path | None, typer.Option(
        None, "--config", help="TOML file with the same keys (flags win); a run's config.toml "
        "repeats it.")),
    "resume": (bool, typer.Option(
        False, "--resume", help="Continue the run in --output from its last checkpoint.")),
    "force": (bool, typer.Option(
        False, "--force", help="Write into an --output folder that holds other files; with "
        "--resume, continue with a teacher whose content differs from the run's.")),
}


def training_parameters(settings: type[TrainingSettings]) -> list[inspect.Parameter]:
    """One flag per key of `settings` that declares a help text: the command's own keys first,
    then the shared ones in declaration order (`--no-validation` after `--val-benchmark`), then
    `--config` and `--resume`.

    The flag's type follows the key's: `--x/--no-x` for a bool, a repeatable flag for a list of
    paths or names, comma-separated numbers for a list of numbers.
    """
    kinds = settings.key_types()
    parameters = []
    for key in settings.key_names():
        declaration = settings.declaration(key)
        if declaration.help is None:
            continue
        kind = _flag_type(kinds[key])
        flag = settings.flag(key)
        names = f"{flag}/--no-{flag.removeprefix('--')}" if kind is bool else flag
        parameters.append(inspect.Parameter(
            key, inspect.Parameter.KEYWORD_ONLY, annotation=kind | None,
            default=typer.Option(None, names, help=declaration.help,
                                 metavar=declaration.metavar, show_default=False)))
        if key == "val_benchmarks":
            parameters.append(_NO_VALIDATION)
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                     default=option) for name, (kind, option) in
                   _SOURCE_FLAGS.items()]
    return parameters


def _flag_type(kind: Any) -> Any:
    """The Typer type of a settings key's flag: a list of numbers is typed as 0.4,0.8 (see
    `number_list`), any other list by repeating the flag; of a union, the first type (a
    `str | dict` key takes a string on the command line, a table in a TOML file)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(argument for argument in typing.get_args(kind) if argument is not type(None))
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return str if item is float else list[item]
    return kind


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


def training_arguments(flags: Mapping[str, Any],
                       settings: type[TrainingSettings]) -> dict[str, Any]:
    """The library's keyword arguments for the training flags and method-option flags in `flags`
    (None for what was left out, so that `--config` or the defaults decide)."""
    values = dict(flags)
    no_validation = values.pop("no_validation")
    if no_validation and values["val_benchmarks"]:
        raise UserInputError("--no-validation and --val-benchmark contradict each other: "
                             "keep one.")
    arguments = {name: values.pop(name) for name in (*_SOURCE_FLAGS, *settings.key_names())
                 if name in values}
    if no_validation:
        arguments["val_benchmarks"] = []
    elif not arguments["val_benchmarks"]:
        arguments["val_benchmarks"] = None
    kinds = settings.key_types()
    for key in arguments.keys() & set(kinds):
        if list[float] in (kinds[key], *typing.get_args(kinds[key])):
            arguments[key] = number_list(arguments[key], settings.flag(key))
    chosen_options = {key: value for key, value in values.items() if value is not None}
    return {**arguments, "method_options": chosen_options or None}


def number_list(text: str | None, flag: str) -> list[float] | None:
    """`--milestones 0.4,0.8` as numbers; the library checks their range."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"{flag} must be comma-separated numbers such as 0.4,0.8, got "
                             f"{text!r}.") from None


def report_run(result: RunResult, json_path: str | None, weights: tuple[str, str],
               summary: str | None = None, **report: Any) -> None:
    """The outcome of a run, from rank 0 only (under torchrun every rank returns the result).

    `weights` is the final weights' label and `--json` key (`("Student", "student")`). A stopped
    run says how to continue it; a finished one shows its validations and where its final and best
    weights are, after the command's `summary`; `--json` gets the run's report plus `report`.
    """
    if not from_environment().is_main:
        return
    label, key = weights
    if human_output(json_path):
        if summary is not None:
            console.print(summary)
        if not result.completed:
            console.print(f"[yellow]Stopped at iteration {result.metrics['iteration']}[/]; the "
                          f"checkpoint is saved: continue with --output {result.output} "
                          "--resume.", soft_wrap=True)
        else:
            _print_validations(result.metrics)
            width = len(label) + 1
            # soft_wrap: a path cut at the console's width could not be copied from a log.
            console.print(f"{label + ':':<{width}} [bold]{result.weights}[/]", soft_wrap=True)
            if result.best is not None:
                console.print(f"{'Best:':<{width}} {result.best}", soft_wrap=True)
    emit_json({"output": str(result.output), "completed": result.completed,
               key: str(result.weights) if result.completed else None,
               "best": str(result.best) if result.best else None, **report,
               "iteration": result.metrics["iteration"],
               "best_validation": result.metrics["best"],
               "validations": result.metrics["validations"]}, json_path)


def _print_validations(metrics: Mapping[str, Any]) -> None:
    """The final and the best validation of a finished run, side by side, if it validated."""
    validations = metrics["validations"]
    if not validations:
        return
    first, last, best = validations[0], validations[-1], metrics["best"]
    # A run that validated its starting weights (quantization) shows them too.
    start = first if first["iteration"] == 0 and last["iteration"] != 0 else None
    table = Table(title="Validation (Y-PSNR / SSIM)")
    table.add_column("benchmark")
    if start is not None:
        table.add_column("start (iter 0)", justify="right")
    table.add_column(f"final (iter {last['iteration']})", justify="right")
    table.add_column(f"best (iter {best['iteration']})", justify="right")
    for name, final in last["results"].items():
        scores = [final, best["results"][name]]
        if start is not None:
            scores.insert(0, start["results"][name])
        table.add_row(name, *(_score(result) for result in scores))
    console.print(table)


def _score(result: Mapping[str, float]) -> str:
    """PSNR / SSIM (validation on tiny patches has no SSIM)."""
    if "ssim" not in result:
        return f"{result['psnr']:.2f} dB"
    return f"{result['psnr']:.2f} dB / {result['ssim']:.4f}"
