"""Benchmark sets: where they live, which layout they use, and how to fetch them safely.

A benchmark is found by name under a data root (`--data-root`, `$SRCOMPRESS_DATA`, else
`~/.cache/srcompress/datasets`) or given as a folder path. Three layouts are recognised, because
users already have their sets in one of them:

- `NAME/HR/<stem>.png` + `NAME/LR_bicubic/X<s>/<stem>x<s>.png` (EDSR's benchmark archive); the LR
  folder may carry another degradation's name (`LR_realesrgan/X4`, as `srcompress datasets
  degrade` writes, or DIV2K's `LR_unknown`) when it is the only `LR_*/X<s>` folder;
- `NAME/GTmod12/<file>` + `NAME/LRbicx<s>/<file>` (BasicSR's datasets);
- a bare folder of HR images, whose LR inputs are then made by our MATLAB-style bicubic.

`fetch` downloads a public archive, checks its sha256 before anything is unpacked, refuses
entries that would land outside the target (`..`, absolute paths, links) and installs atomically:
everything is unpacked into a temporary folder inside the data root and renamed into place last,
so an interrupted or refused fetch leaves nothing half-written. Before anything is unpacked, the
sizes the archive declares are added up: an archive that would expand past `ArchiveLimits`
(20 GiB, or 100 times its own size; both overridable) or past the free space of the data root is
refused, so a small hostile archive cannot fill the disk. We record a checksum only when we
know it for certain; for the other archives the user passes `--sha256` (the value published by
the archive's source) or explicitly accepts an unverified download, and is shown its checksum.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from srcompress.data.images import is_image_file, list_images
from srcompress.errors import UserInputError, WorkFailedError

DATA_ROOT_VARIABLE = "SRCOMPRESS_DATA"
_CHUNK_BYTES = 1 << 20
_EDSR_BENCHMARK_ARCHIVE = "https://cv.snu.ac.kr/research/EDSR/benchmark.tar"

ProgressCallback = Callable[[int, int | None], None]


@dataclass(frozen=True)
class ArchiveLimits:
    """How far a fetched archive may expand. The defaults pass every benchmark archive we know
    (the largest, DIV2K's validation set, unpacks to about 0.5 GiB at a ratio near 1: its PNGs are
    compressed already) with a wide margin, and stop decompression bombs, whose ratio is in the
    thousands."""

    max_bytes: int = 20 * 2**30
    max_ratio: float = 100.0


@dataclass(frozen=True)
class BenchmarkEntry:
    """A known benchmark: its canonical name, other spellings, and where its archive is."""

    name: str
    aliases: tuple[str, ...]
    description: str
    url: str | None
    sha256: str | None
    archive_folder: str | None
    how_to_get: str = ""

    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


BENCHMARKS: tuple[BenchmarkEntry, ...] = (
    BenchmarkEntry("Set5", ("set5",), "5 images (Bevilacqua et al., 2012)",
                   _EDSR_BENCHMARK_ARCHIVE, None, "benchmark/Set5"),
    BenchmarkEntry("Set14", ("set14",), "14 images (Zeyde et al., 2010)",
                   _EDSR_BENCHMARK_ARCHIVE, None, "benchmark/Set14"),
    BenchmarkEntry("B100", ("BSD100", "BSDS100", "b100"), "100 BSD300 test images",
                   _EDSR_BENCHMARK_ARCHIVE, None, "benchmark/B100"),
    BenchmarkEntry("Urban100", ("urban100",), "100 urban scenes (Huang et al., 2015)",
                   _EDSR_BENCHMARK_ARCHIVE, None, "benchmark/Urban100"),
    BenchmarkEntry("Manga109", ("manga109",), "109 manga volumes (Matsui et al., 2017)",
                   None, None, None,
                   how_to_get="Manga109 is distributed by its authors on request "
                              "(manga109.org); put its images in DATA_ROOT/Manga109/HR"),
    BenchmarkEntry("DIV2K-val", ("DIV2K", "DIV2K_valid", "div2k-val", "DIV2K_valid_HR"),
                   "DIV2K validation images 0801-0900 (Agustsson & Timofte, 2017)",
                   "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip", None,
                   "DIV2K_valid_HR"),
)


@dataclass(frozen=True)
class ImagePair:
    """One benchmark image: its ground truth and, when the benchmark ships one, its LR file."""

    name: str
    hr_path: Path
    lr_path: Path | None


@dataclass
class Benchmark:
    """A located benchmark at one scale; `lr_source` says whether LR images come from files."""

    name: str
    folder: Path
    layout: str
    scale: int
    pairs: list[ImagePair] = field(default_factory=list)

    @property
    def lr_source(self) -> str:
        return "files" if self.pairs and self.pairs[0].lr_path else "bicubic"


def default_data_root() -> Path:
    """`$SRCOMPRESS_DATA` if set, else `~/.cache/srcompress/datasets`."""
    configured = os.environ.get(DATA_ROOT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "srcompress" / "datasets"


def lookup(name: str) -> BenchmarkEntry | None:
    """The registry entry spelled `name` (case-insensitive), or None."""
    wanted = name.casefold()
    for entry in BENCHMARKS:
        if wanted in (spelling.casefold() for spelling in entry.spellings()):
            return entry
    return None


def _layout_of(folder: Path) -> str:
    if (folder / "HR").is_dir():
        return "HR+LR_bicubic"
    if (folder / "GTmod12").is_dir():
        return "GTmod12+LRbicx"
    return "folder"


def _hr_folder(folder: Path, layout: str) -> Path:
    return {"HR+LR_bicubic": folder / "HR", "GTmod12+LRbicx": folder / "GTmod12"}.get(
        layout, folder)


def _lr_candidates(layout: str, folder: Path, hr_path: Path, scale: int) -> tuple[Path, list[Path]]:
    """The LR folder of `layout` and the file names an LR image of `hr_path` may have there."""
    if layout == "HR+LR_bicubic":
        lr_folder = lr_folder_of(folder, scale)
        stem = f"{hr_path.stem}x{scale}"
        return lr_folder, [lr_folder / f"{stem}{suffix}" for suffix in (".png", hr_path.suffix)]
    lr_folder = folder / f"LRbicx{scale}"
    return lr_folder, [lr_folder / hr_path.name]


def lr_folder_of(folder: Path, scale: int) -> Path:
    """`LR_bicubic/X<s>` of an `HR/` set, else its only `LR_<degradation>/X<s>` folder.

    Several non-bicubic LR folders at one scale are ambiguous: the user passes the one they mean
    as its own benchmark folder.
    """
    bicubic = folder / "LR_bicubic" / f"X{scale}"
    others = sorted(path for path in folder.glob(f"LR_*/X{scale}") if path.is_dir())
    if bicubic.is_dir() or not others:
        return bicubic
    if len(others) > 1:
        names = ", ".join(str(path.relative_to(folder)) for path in others)
        raise UserInputError(
            f"{folder} has several x{scale} LR folders ({names}) and no LR_bicubic: keep one, or "
            "make a benchmark folder per degradation.")
    return others[0]


def read_benchmark_folder(folder: Path, scale: int, name: str | None = None) -> Benchmark:
    """Detect the layout of `folder` and pair every HR image with its LR file, if the set has them.

    A set either ships LR files for `scale` for every image or for none: a partial LR folder is an
    error, because silently mixing MATLAB-made and generated LR inputs would skew the average.
    """
    layout = _layout_of(folder)
    hr_folder = _hr_folder(folder, layout)
    benchmark = Benchmark(name or folder.name, folder, layout, scale)
    for hr_path in list_images(hr_folder):
        lr_path = None
        if layout != "folder":
            lr_folder, candidates = _lr_candidates(layout, folder, hr_path, scale)
            if lr_folder.is_dir():
                lr_path = next((path for path in candidates if path.is_file()), None)
                if lr_path is None:
                    raise UserInputError(
                        f"{lr_folder} has no LR image for {hr_path.name} (expected "
                        f"{candidates[0].name}); complete the folder or remove it to have LR "
                        "images made by bicubic downscaling.")
        benchmark.pairs.append(ImagePair(hr_path.stem, hr_path, lr_path))
    return benchmark


def _search_folders(entry: BenchmarkEntry, data_root: Path) -> list[Path]:
    return list(dict.fromkeys(data_root / spelling for spelling in entry.spellings()))


def find_benchmark(name_or_path: str | os.PathLike[str], data_root: str | os.PathLike[str] | None,
                   scale: int) -> Benchmark:
    """Locate a benchmark by registry name or folder name (under `data_root`) or by folder path,
    at `scale`."""
    root = Path(data_root) if data_root is not None else default_data_root()
    text = str(name_or_path)
    as_path = Path(text).expanduser()
    if as_path.is_dir():
        entry = lookup(as_path.name)
        return read_benchmark_folder(as_path, scale, entry.name if entry else as_path.name)
    entry = lookup(text)
    if entry is None and (root / text).is_dir():
        # A set the user made under the data root, e.g. by `srcompress datasets degrade`.
        return read_benchmark_folder(root / text, scale, text)
    if entry is None:
        if os.sep in text or "/" in text or as_path.suffix:
            raise UserInputError(f"Benchmark folder {as_path} does not exist.")
        known = ", ".join(entry.name for entry in BENCHMARKS)
        raise UserInputError(
            f"Unknown benchmark {text!r}: use one of {known}, or a folder of images.")
    for folder in _search_folders(entry, root):
        if folder.is_dir():
            return read_benchmark_folder(folder, scale, entry.name)
    looked = ", ".join(str(folder) for folder in _search_folders(entry, root))
    how = (f"get it with `srcompress datasets fetch {entry.name} --data-root {root}`"
           if entry.url else entry.how_to_get)
    raise UserInputError(f"Benchmark {entry.name} is not installed (looked in {looked}); {how}.")


@dataclass(frozen=True)
class InstalledBenchmark:
    """What `datasets list` shows for one registry entry."""

    entry: BenchmarkEntry
    folder: Path | None
    layout: str | None
    images: int
    lr_scales: tuple[int, ...]


def _lr_scales(folder: Path, layout: str) -> tuple[int, ...]:
    if layout == "HR+LR_bicubic":
        names = [path.name[1:] for path in folder.glob("LR_*/X*") if path.is_dir()]
    elif layout == "GTmod12+LRbicx":
        names = [path.name[6:] for path in folder.glob("LRbicx*") if path.is_dir()]
    else:
        return ()
    return tuple(sorted({int(name) for name in names if name.isdigit()}))


def installed_benchmarks(data_root: str | os.PathLike[str] | None) -> list[InstalledBenchmark]:
    """Every registry entry with the folder it is installed in under `data_root`, if any."""
    root = Path(data_root) if data_root is not None else default_data_root()
    rows = []
    for entry in BENCHMARKS:
        folder = next((path for path in _search_folders(entry, root) if path.is_dir()), None)
        if folder is None:
            rows.append(InstalledBenchmark(entry, None, None, 0, ()))
            continue
        layout = _layout_of(folder)
        images = sum(1 for path in _hr_folder(folder, layout).iterdir() if is_image_file(path))
        rows.append(InstalledBenchmark(entry, folder, layout, images, _lr_scales(folder, layout)))
    return rows


# --- fetching -------------------------------------------------------------------------------


def _download(url: str, destination: Path, progress: ProgressCallback | None) -> str:
    """Stream `url` into `destination`, returning the sha256 of what arrived."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as file:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(_CHUNK_BYTES):
                file.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise WorkFailedError(
            f"Downloading {url} failed ({reason}); nothing was installed.") from None
    return digest.hexdigest()


def _check_member_name(url: str, name: str) -> PurePosixPath:
    """Refuse archive entry names that would write outside the extraction folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not path.parts or path.parts == (".",):
        raise UserInputError(f"The archive from {url} has an entry with no name ({name!r}); "
                             "nothing was installed.")
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UserInputError(
            f"The archive from {url} has an unsafe entry {name!r} (it would be written outside "
            "the target folder); nothing was installed.")
    return path


def _check_expanded_size(archive: Path, url: str, expanded: int, limits: ArchiveLimits) -> None:
    """Refuse, before writing anything, an archive whose entries add up to too much."""
    packed = max(archive.stat().st_size, 1)
    gib = expanded / 2**30
    if expanded > limits.max_bytes:
        raise UserInputError(
            f"The archive from {url} would expand to {gib:.1f} GiB, above the limit of "
            f"{limits.max_bytes / 2**30:.1f} GiB; nothing was installed (raise it with "
            "--max-expanded-gib if you trust this archive).")
    if expanded / packed > limits.max_ratio:
        raise UserInputError(
            f"The archive from {url} would expand {expanded / packed:.0f} times, from "
            f"{packed / 2**20:.1f} MiB to {gib:.1f} GiB, above the limit of {limits.max_ratio:g} "
            "times (a decompression bomb?); nothing was installed (raise it with --max-ratio if "
            "you trust this archive).")
    free = shutil.disk_usage(archive.parent).free
    if expanded > free:
        raise WorkFailedError(
            f"The archive from {url} expands to {gib:.1f} GiB but only {free / 2**30:.1f} GiB "
            f"is free where it would be installed ({archive.parent.parent}); free some space or "
            "use another --data-root. Nothing was installed.")


def _extract_zip(archive: Path, target: Path, url: str, limits: ArchiveLimits) -> None:
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        for member in members:
            _check_member_name(url, member.filename)
            if stat.S_ISLNK(member.external_attr >> 16):
                raise UserInputError(
                    f"The archive from {url} has a link entry {member.filename!r}, which is not "
                    "allowed; nothing was installed.")
        # zipfile stops reading an entry at its declared size, so the declared sizes bound it.
        _check_expanded_size(archive, url, sum(member.file_size for member in members), limits)
        for member in members:
            bundle.extract(member, target)


def _extract_tar(archive: Path, target: Path, url: str, limits: ArchiveLimits) -> None:
    with tarfile.open(archive) as bundle:
        members = bundle.getmembers()
        for member in members:
            _check_member_name(url, member.name)
            if not (member.isfile() or member.isdir()):
                raise UserInputError(
                    f"The archive from {url} has a link or special entry {member.name!r}, which "
                    "is not allowed; nothing was installed.")
        _check_expanded_size(archive, url, sum(member.size for member in members), limits)
        bundle.extractall(target, members=members, filter="data")


def _extract(archive: Path, target: Path, url: str, limits: ArchiveLimits) -> None:
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target, url, limits)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, target, url, limits)
        else:
            raise UserInputError(f"{url} is not a zip or tar archive; nothing was installed.")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, ValueError,
            NotImplementedError, zlib.error) as error:
        raise UserInputError(f"The archive from {url} is corrupt ({error}); nothing was "
                             "installed.") from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise WorkFailedError(
                f"Unpacking the archive from {url} into {target.parent.parent} failed: the disk "
                f"is full ({error.strerror}); nothing was installed.") from None
        # Entries that cannot coexist (a file and a folder of one name...): the archive's fault.
        raise UserInputError(
            f"The archive from {url} cannot be unpacked ({error.strerror or error}); nothing "
            "was installed.") from None


def _dataset_folder(extracted: Path, archive_folder: str | None) -> Path:
    """The unpacked folder that holds the set: the entry's own, else below any wrapper folders."""
    if archive_folder and (extracted / archive_folder).is_dir():
        return extracted / archive_folder
    folder = extracted
    while _layout_of(folder) == "folder":
        children = [path for path in folder.iterdir() if not path.name.startswith(".")]
        if len(children) != 1 or not children[0].is_dir():
            break
        folder = children[0]
    return folder


def _check_has_images(folder: Path, source: str) -> None:
    layout = _layout_of(folder)
    hr_folder = _hr_folder(folder, layout)
    if not any(is_image_file(path) for path in hr_folder.iterdir()):
        raise UserInputError(f"The archive from {source} holds no benchmark images; nothing was "
                             "installed.")


@dataclass(frozen=True)
class FetchResult:
    name: str
    folder: Path
    sha256: str | None
    already_installed: bool


def fetch(name: str, data_root: str | os.PathLike[str] | None = None, url: str | None = None,
          sha256: str | None = None, verify: bool = True,
          progress: ProgressCallback | None = None,
          limits: ArchiveLimits = ArchiveLimits()) -> FetchResult:
    """Download and install benchmark `name` into `data_root/<name>`, verified and atomically.

    `url` replaces the registry's address (a mirror, or a set with no public archive); `sha256`
    replaces or supplies the expected checksum. Without any known checksum the download is refused
    unless `verify=False`, so an unverified archive is never installed by accident. An archive
    that would expand past `limits` is refused before anything is unpacked.
    """
    entry = lookup(name)
    if entry is None:
        known = ", ".join(entry.name for entry in BENCHMARKS)
        raise UserInputError(f"Unknown benchmark {name!r}: fetch knows {known}.")
    root = Path(data_root) if data_root is not None else default_data_root()
    target = root / entry.name
    if target.exists():
        return FetchResult(entry.name, target, None, already_installed=True)
    source = url or entry.url
    if source is None:
        raise UserInputError(f"{entry.how_to_get}; or pass --url to an archive you have.")
    expected = (sha256 or entry.sha256 or "").strip().lower() or None
    if expected is None and verify:
        raise UserInputError(
            f"No checksum is recorded for {entry.name}'s archive {source}: pass --sha256 with the "
            "checksum its source publishes, or --no-verify to install it unverified.")
    root.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=f".fetch-{entry.name}-", dir=root))
    try:
        archive = workspace / "archive"
        actual = _download(source, archive, progress)
        if verify and expected is not None and actual != expected:
            raise WorkFailedError(
                f"The archive from {source} has sha256 {actual}, not the expected {expected}; "
                "nothing was installed.")
        extracted = workspace / "extracted"
        extracted.mkdir()
        _extract(archive, extracted, source, limits)
        dataset = _dataset_folder(extracted, entry.archive_folder)
        _check_has_images(dataset, source)
        os.replace(dataset, target)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return FetchResult(entry.name, target, actual, already_installed=False)
