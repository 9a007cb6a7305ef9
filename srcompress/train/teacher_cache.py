"""The teacher-output cache (`distill --teacher-cache DIR`): the frozen teacher runs once per
whole training image, and training crops its stored outputs instead of running it every step.

What is stored, per training image of LR size h×w at scale s (a "part" is built and used as a
whole, so a cache may hold some parts and the teacher runs online for the others):

- `pairs`: T(LR), 3×sh×sw, the target of KD and of DUKD's pair term;
- `zoom_out`: for each of the s² phases (dy, dx) the LR image shrunk once more from row dy and
  column dx, x↓ = imresize(LR[dy:, dx:], 1/s) (float32, the student's input) and T(x↓) (the
  target). A patch at (top, left) cuts its x↓ from phase (top mod s, left mod s), so patch
  positions stay exactly those of an uncached run. Costs the bytes of `pairs`;
- `zoom_in`: T(HR), 3×s²h×s²w, from which DUKD's HR tiles cut their targets (s² times the bytes
  of `pairs`; the part dropped first when the disk lacks room).

A cached target is the teacher's output with the whole image as context, cropped and flipped as
the patch was (`augment`): inside the patch it has no zero-padding border effects, unlike the
teacher run on the patch alone, and the flips are applied to the output rather than to the
teacher's input (the same only for a flip-equivariant teacher). docs/results.md measures both.

Files: one flat `.npy` per array (`pairs.npy`, `zoom_out.npy`, `zoom_out_inputs.npy`,
`zoom_in.npy`), memory-mapped with NumPy for reading, written in place while building (a
part-sized file is reserved first, so a full disk fails before the teacher has run), and
`manifest.json`, which names the key and the finished parts. The key is a content hash: the
teacher's architecture, settings and weights, the training images' pixels (HR and LR, in order),
the scale and the degradation. Only a deterministic degradation can be cached (bicubic: the same
LR every time); a random one draws new inputs every step, so it has no fixed teacher output.

Storage is float16 by default; float32 and bfloat16 caches can be built through this API
(`docs/results.md` measures their effect on the trained student). A running process checks
before every batch that its files are still the ones it mapped (a file truncated under a memory
map would otherwise kill it with SIGBUS), and stops with one sentence when one was deleted,
truncated or replaced.

Several processes share one cache: whoever builds holds a file lock on the folder (rank 0 under
torchrun; other ranks and other runs wait for it, then read).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor, nn

from srcompress.data.resize import imresize
from srcompress.data.training import TrainingImages, augment
from srcompress.errors import UserInputError, WorkFailedError
from srcompress.files import atomic_path
from srcompress.inference import TorchRunner
from srcompress.train.distributed import Distributed

FORMAT = 1
PARTS = ("pairs", "zoom_out", "zoom_in")
PART_NAMES = {"pairs": "pairs", "zoom_out": "zoom-out", "zoom_in": "zoom-in"}
# numpy has no bfloat16: its bits are stored as uint16 and viewed as bfloat16 by torch.
STORAGE = {"float16": (np.float16, torch.float16), "bfloat16": (np.uint16, torch.bfloat16),
           "float32": (np.float32, torch.float32)}
DEFAULT_STORAGE = "float16"
CACHEABLE_DEGRADATIONS = ("bicubic",)
MANIFEST = "manifest.json"
# Left free on the disk after a cache is built, so the run itself can still write checkpoints.
_DISK_RESERVE = 256 * 2**20
# Activation memory the teacher may use per call on the CPU before images are tiled.
_CPU_MEMORY_BUDGET = 2 * 2**30


@dataclass(frozen=True)
class CacheKey:
    """What the cached outputs depend on; any difference makes a cache foreign."""

    teacher: str
    images: str
    scale: int
    degradation: str


# In the order they are compared: a cache of another scale differs in teacher and images too.
KEY_MEANINGS = {"scale": "another scale", "degradation": "another degradation",
                "teacher": "another teacher (architecture or weights)",
                "images": "other training images"}


def teacher_digest(module: nn.Module, arch: str, settings: dict) -> str:
    """SHA-256 of the teacher's architecture, settings and every tensor of its state dict."""
    digest = hashlib.sha256(json.dumps([arch, settings], sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def images_digest(data: TrainingImages) -> str:
    """SHA-256 of the training pairs' pixels, in the order patches index them."""
    digest = hashlib.sha256(f"x{data.scale}".encode())
    for image in data.images:
        digest.update(f"{tuple(image.hr.shape)}{tuple(image.lr.shape)}".encode())
        digest.update(image.hr.contiguous().numpy())
        digest.update(image.lr.contiguous().numpy())
    return digest.hexdigest()


def require_cacheable(degradation: str) -> None:
    """Refuses a random degradation: every step draws new LR inputs, so nothing can be stored."""
    if degradation not in CACHEABLE_DEGRADATIONS:
        raise UserInputError(
            f"--teacher-cache needs a fixed degradation ({', '.join(CACHEABLE_DEGRADATIONS)}), "
            f"but --degradation {degradation} draws new LR inputs every step, so the teacher "
            "must run online: drop --teacher-cache.")


@dataclass(frozen=True)
class Region:
    """One image's array inside a flat part file."""

    offset: int
    shape: tuple[int, int, int]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Layout:
    """Where each image's outputs lie in the flat files; a function of the LR sizes and scale."""

    FILES: ClassVar[dict[str, tuple[str, ...]]] = {
        "pairs": ("pairs",), "zoom_out": ("zoom_out_inputs", "zoom_out"), "zoom_in": ("zoom_in",)}

    def __init__(self, lr_sizes: Sequence[tuple[int, int]], scale: int) -> None:
        self.scale = scale
        self.regions: dict[str, list] = {name: [] for names in self.FILES.values()
                                         for name in names}
        totals = dict.fromkeys(self.regions, 0)

        def place(name: str, shape: tuple[int, int, int]) -> Region:
            region = Region(totals[name], shape)
            totals[name] += region.size
            return region

        s = scale
        for height, width in lr_sizes:
            self.regions["pairs"].append(place("pairs", (3, s * height, s * width)))
            self.regions["zoom_in"].append(place("zoom_in", (3, s * s * height, s * s * width)))
            inputs, targets = [], []
            for dy in range(s):
                for dx in range(s):
                    shrunk = (-(-(height - dy) // s), -(-(width - dx) // s))
                    inputs.append(place("zoom_out_inputs", (3, *shrunk)))
                    targets.append(place("zoom_out", (3, s * shrunk[0], s * shrunk[1])))
            self.regions["zoom_out_inputs"].append(inputs)
            self.regions["zoom_out"].append(targets)
        self.elements = totals

    def part_bytes(self, part: str, itemsize: int) -> int:
        return sum(self.elements[name] * (4 if name == "zoom_out_inputs" else itemsize)
                   for name in self.FILES[part])


class TeacherCacheChanged(WorkFailedError):
    """A cache file was deleted, truncated or replaced while a run was reading it."""


class TeacherCache:
    """An opened cache: memory-mapped parts, and the crops of one batch's teacher targets."""

    def __init__(self, folder: Path, manifest: dict, parts: Iterable[str]) -> None:
        self.folder = folder
        self.scale = int(manifest["key"]["scale"])
        self.storage = manifest["storage"]
        self.layout = Layout([tuple(size) for size in manifest["lr_sizes"]], self.scale)
        self.parts = frozenset(parts)
        self._torch_dtype = STORAGE[self.storage][1]
        self._arrays: dict[str, np.ndarray] = {}
        self._identity: dict[str, tuple[int, int]] = {}
        for part in sorted(self.parts):
            for name in Layout.FILES[part]:
                self._open(name)

    def _open(self, name: str) -> None:
        path = self.folder / f"{name}.npy"
        expected = self.layout.elements[name]
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise UserInputError(
                f"The teacher cache file {path} is missing or damaged ({error}): delete "
                f"{self.folder} and run again to rebuild it.") from None
        if array.shape != (expected,):
            raise UserInputError(
                f"The teacher cache file {path} holds {array.size} values instead of "
                f"{expected}: delete {self.folder} and run again to rebuild it.")
        stat = os.stat(path)
        self._arrays[name] = array
        self._identity[name] = (stat.st_ino, stat.st_size)

    def check(self) -> None:
        """Stops with one sentence if a mapped file is no longer the file that was opened:
        reading a memory map past the end of a truncated file kills the process (SIGBUS)."""
        for name, identity in self._identity.items():
            path = self.folder / f"{name}.npy"
            try:
                stat = os.stat(path)
                now = (stat.st_ino, stat.st_size)
            except OSError:
                now = None
            if now != identity:
                raise TeacherCacheChanged(
                    f"The teacher cache file {path} was deleted or changed during the run")

    def batch(self, placements: Tensor, patch_size: int, parts: Iterable[str],
              device: torch.device) -> BatchTargets:
        """The cached targets of one batch (`placements` from `PatchBatches`), for `parts`."""
        self.check()
        return BatchTargets(self, placements.tolist(), patch_size, frozenset(parts), device)

    def crop(self, name: str, regions: Sequence[tuple[Region, int, int, int, int]],
             device: torch.device) -> Tensor:
        """Stacked `size`² crops at (top, left) of the given image regions, each flipped."""
        array = self._arrays[name]
        crops = []
        for region, top, left, size, flips in regions:
            image = array[region.offset:region.offset + region.size].reshape(region.shape)
            values = torch.from_numpy(np.ascontiguousarray(
                image[:, top:top + size, left:left + size]))
            if name != "zoom_out_inputs" and self._torch_dtype == torch.bfloat16:
                values = values.view(torch.bfloat16)
            crops.append(augment(values, flips))
        return torch.stack(crops).to(device, non_blocking=True).float()


class BatchTargets:
    """`CachedTargets` (methods/base.py) of one batch; each part is cut only when asked for."""

    def __init__(self, cache: TeacherCache, placements: list[list[int]], patch_size: int,
                 parts: frozenset[str], device: torch.device) -> None:
        self.cache = cache
        self.placements = placements
        self.patch = patch_size
        self.parts = parts
        self.device = device

    def pairs(self) -> Tensor | None:
        if "pairs" not in self.parts:
            return None
        s, regions = self.cache.scale, self.cache.layout.regions["pairs"]
        return self.cache.crop("pairs", [
            (regions[index], s * top, s * left, s * self.patch, flips)
            for index, top, left, flips in self.placements], self.device)

    def _zoom_out(self, name: str, factor: int) -> Tensor | None:
        if "zoom_out" not in self.parts:
            return None
        s, regions = self.cache.scale, self.cache.layout.regions[name]
        return self.cache.crop(name, [
            (regions[index][(top % s) * s + left % s], factor * (top // s), factor * (left // s),
             factor * self.patch // s, flips)
            for index, top, left, flips in self.placements], self.device)

    def zoom_out_input(self) -> Tensor | None:
        return self._zoom_out("zoom_out_inputs", 1)

    def zoom_out(self) -> Tensor | None:
        return self._zoom_out("zoom_out", self.cache.scale)

    def zoom_in(self, tiles: Tensor) -> Tensor | None:
        if "zoom_in" not in self.parts:
            return None
        s, p, regions = self.cache.scale, self.patch, self.cache.layout.regions["zoom_in"]
        cells = torch.arange(s * s).view(s, s)
        wanted = []
        for (index, top, left, flips), chosen in zip(self.placements, tiles.tolist(), strict=True):
            # Tile t of the flipped HR patch is the flipped tile `source[t]` of the unflipped one.
            source = augment(cells, flips).reshape(-1)
            for tile in chosen:
                row, column = divmod(int(source[tile]), s)
                wanted.append((regions[index], s * (s * top + row * p), s * (s * left + column * p),
                               s * p, flips))
        return self.cache.crop("zoom_in", wanted, self.device)


@dataclass
class CachePlan:
    """What a run reads from the cache and what it computes online, said in its first line."""

    cache: TeacherCache
    used: tuple[str, ...]
    online: tuple[str, ...]
    reason: str

    def describe(self) -> str:
        cached = ", ".join(PART_NAMES[part] for part in self.used) or "nothing"
        text = f"teacher cache {self.cache.folder} ({self.cache.storage}): {cached} cached"
        if self.online:
            text += f"; {', '.join(PART_NAMES[part] for part in self.online)} online"
            if self.reason:
                text += f" ({self.reason})"
        return text


ProgressFn = Callable[[int, int], None]


def open_teacher_cache(folder: str | Path, teacher: nn.Module, arch: str, settings: dict,
                       data: TrainingImages, wanted: Sequence[str], patch_size: int,
                       device: torch.device, place: Distributed | None = None, *,
                       degradation: str = "bicubic", storage: str = DEFAULT_STORAGE,
                       disk_budget: int | None = None,
                       message: Callable[[str], None] = lambda text: None,
                       progress: ProgressFn | None = None) -> CachePlan:
    """Opens the cache in `folder` for a run that can read the parts `wanted`, building the parts
    it lacks that fit on the disk (`disk_budget` bytes, default: the free space less a reserve).

    Refuses a foreign cache (another teacher, other images, scale or degradation) and a folder
    that holds other files. `storage` is the precision of a new cache; an existing one keeps its
    own. Under torchrun rank 0 builds while the other ranks wait for the folder's lock.
    """
    require_cacheable(degradation)
    folder = Path(folder)
    place = place or Distributed()
    key = CacheKey(teacher_digest(teacher, arch, settings), images_digest(data), data.scale,
                   degradation)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(
            f"Cannot create the teacher cache folder {folder} ({error.strerror or error}): pass "
            "another --teacher-cache.") from None
    lock = FileLock(folder / ".lock")
    if place.is_main:
        lock.acquire()
    place.barrier()  # rank 0 holds the lock before any other rank asks for it
    try:
        if not place.is_main:
            lock.acquire()
        manifest = _read_manifest(folder, key, data, storage)
        wanted = [part for part in PARTS if part in wanted]
        layout = Layout([tuple(image.lr.shape[1:]) for image in data.images], data.scale)
        itemsize = np.dtype(STORAGE[manifest["storage"]][0]).itemsize
        if place.is_main:  # a part whose file was deleted or truncated is built again
            manifest["parts"] = [part for part in manifest["parts"]
                                 if _part_intact(folder, part, layout, manifest["storage"])]
        missing = [part for part in wanted if part not in manifest["parts"]]
        budget = disk_budget if disk_budget is not None else (
            shutil.disk_usage(folder).free - _DISK_RESERVE)
        build, reason = choose_parts(missing, {part: layout.part_bytes(part, itemsize)
                                               for part in missing}, budget)
        if missing and not build and len(missing) == len(wanted):
            needed = layout.part_bytes(missing[0], itemsize)
            raise UserInputError(
                f"The teacher cache in {folder} needs {_gb(needed)} for its "
                f"{PART_NAMES[missing[0]]} part but the disk has {_gb(max(budget, 0))} "
                "to spare: free some space, pass a --teacher-cache folder on a larger disk, or "
                "drop --teacher-cache.")
        if build and not place.is_main:
            raise WorkFailedError(
                f"Process {place.rank} found no {PART_NAMES[build[0]]} part in the teacher cache "
                f"{folder} after rank 0 built it: check that every process sees the same folder "
                "(a shared file system).")
        if build:
            total = sum(layout.part_bytes(part, itemsize) for part in build)
            message(f"Building the teacher cache in {folder}: "
                    f"{', '.join(PART_NAMES[part] for part in build)} of {len(data.images)} "
                    f"images, {_gb(total)} on disk.")
            _build(folder, manifest, layout, build, teacher, data, device, progress)
    finally:
        lock.release()
    manifest = _read_manifest(folder, key, data, storage)
    usable = [part for part in wanted if part in manifest["parts"]]
    reason = "" if len(usable) == len(wanted) else reason
    if "zoom_out" in usable and patch_size % data.scale:
        usable.remove("zoom_out")
        reason = (f"zoom-out needs --patch-size a multiple of the scale x{data.scale}, "
                  f"got {patch_size}")
    cache = TeacherCache(folder, manifest, usable)
    online = tuple(part for part in wanted if part not in usable)
    return CachePlan(cache, tuple(usable), online, reason)


def choose_parts(missing: Sequence[str], sizes: dict[str, int],
                 budget: int) -> tuple[list[str], str]:
    """The missing parts to build, in `PARTS` order, while they fit into `budget` bytes; and,
    when some do not, why (for the run's first line)."""
    chosen, used = [], 0
    for part in missing:
        if used + sizes[part] <= budget:
            chosen.append(part)
            used += sizes[part]
    left = [part for part in missing if part not in chosen]
    reason = (f"{', '.join(PART_NAMES[part] for part in left)} would need "
              f"{_gb(sum(sizes[part] for part in left))}, {_gb(max(budget - used, 0))} free"
              if left else "")
    return chosen, reason


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def _read_manifest(folder: Path, key: CacheKey, data: TrainingImages, storage: str) -> dict:
    """The folder's manifest, checked against `key`; a new one (no parts yet) for an empty
    folder."""
    path = folder / MANIFEST
    if not path.is_file():
        strangers = [entry.name for entry in folder.iterdir()
                     if entry.name != ".lock" and not entry.name.endswith(".partial")]
        if strangers:
            raise UserInputError(
                f"The folder {folder} is not a teacher cache (no {MANIFEST}) and holds other "
                f"files ({strangers[0]}): pass an empty or new --teacher-cache folder.")
        if storage not in STORAGE:
            raise UserInputError(f"Teacher cache storage must be one of {', '.join(STORAGE)}, "
                                 f"got {storage!r}.")
        return {"format": FORMAT, "key": asdict(key), "storage": storage,
                "lr_sizes": [list(image.lr.shape[1:]) for image in data.images], "parts": []}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        saved = CacheKey(**manifest["key"])
        if manifest["format"] != FORMAT or manifest["storage"] not in STORAGE:
            raise ValueError("unknown format")
    except (OSError, ValueError, KeyError, TypeError):
        raise UserInputError(
            f"The teacher cache manifest {path} is unreadable or of another srcompress version: "
            f"delete {folder} to rebuild the cache, or pass another --teacher-cache.") from None
    for field, meaning in KEY_MEANINGS.items():
        if getattr(saved, field) != getattr(key, field):
            raise UserInputError(
                f"The teacher cache in {folder} was built for {meaning} than this run's: "
                f"pass a new --teacher-cache folder, or delete {folder} to rebuild it.")
    return manifest


def _build(folder: Path, manifest: dict, layout: Layout, parts: Sequence[str],
           teacher: nn.Module, data: TrainingImages, device: torch.device,
           progress: ProgressFn | None) -> None:
    """Runs the teacher over every image for each of `parts`, writing each part's files in
    place (as `.partial` until complete) and adding the part to the manifest when done."""
    numpy_dtype, torch_dtype = STORAGE[manifest["storage"]]
    runner = TorchRunner(teacher, data.scale, device, tile=_tile_size(teacher, device),
                         tile_pad=receptive_radius(teacher))
    total, done = len(parts) * len(data.images), 0
    for part in parts:
        files = {}
        for name in Layout.FILES[part]:
            dtype = np.float32 if name == "zoom_out_inputs" else numpy_dtype
            files[name] = _reserve(folder / f"{name}.npy.partial", dtype, layout.elements[name])
        for index, image in enumerate(data.images):
            lr = image.lr.float().div(255)[None]
            if part == "pairs":
                _store(files["pairs"], layout.regions["pairs"][index], runner(lr), torch_dtype)
            elif part == "zoom_in":
                hr = image.hr.float().div(255)[None]
                _store(files["zoom_in"], layout.regions["zoom_in"][index], runner(hr),
                       torch_dtype)
            else:
                s = data.scale
                for phase in range(s * s):
                    dy, dx = divmod(phase, s)
                    shrunk = imresize(lr[..., dy:, dx:], scale=1 / s)
                    _store(files["zoom_out_inputs"],
                           layout.regions["zoom_out_inputs"][index][phase], shrunk, torch.float32)
                    _store(files["zoom_out"], layout.regions["zoom_out"][index][phase],
                           runner(shrunk), torch_dtype)
            done += 1
            if progress is not None:
                progress(done, total)
        for array in files.values():
            array.flush()
        names = list(files)
        files.clear()  # the memory maps are closed before their files are renamed
        for name in names:
            os.replace(folder / f"{name}.npy.partial", folder / f"{name}.npy")
        manifest["parts"] = [p for p in PARTS if p in manifest["parts"] or p == part]
        with atomic_path(folder / MANIFEST) as temporary:
            temporary.write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _part_intact(folder: Path, part: str, layout: Layout, storage: str) -> bool:
    for name in Layout.FILES[part]:
        dtype = np.float32 if name == "zoom_out_inputs" else STORAGE[storage][0]
        try:
            array = np.load(folder / f"{name}.npy", mmap_mode="r")
        except (OSError, ValueError):
            return False
        if array.dtype != dtype or array.shape != (layout.elements[name],):
            return False
    return True


def _reserve(path: Path, dtype: type, elements: int) -> np.memmap:
    """A new `.npy` file of `elements` values, its blocks allocated now (a full disk fails here,
    before any teacher time is spent, instead of later with SIGBUS while writing the map)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(elements,))
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            path.unlink(missing_ok=True)
            raise UserInputError(
                f"Cannot reserve {_gb(elements * np.dtype(dtype).itemsize)} for the teacher "
                f"cache file {path} ({error.strerror or error}): free some space or pass another "
                "--teacher-cache folder.") from None
    return array


def _store(array: np.memmap, region: Region, output: Tensor, dtype: torch.dtype) -> None:
    values = output.reshape(region.shape).to("cpu", dtype)
    if dtype == torch.bfloat16:
        values = values.view(torch.int16)
    array[region.offset:region.offset + region.size] = values.reshape(-1).numpy().view(array.dtype)


def receptive_radius(module: nn.Module) -> int:
    """LR pixels of context the network's convolutions can reach on each side: the sum of their
    radii, an upper bound for residual networks (EDSR, RCAN, Compact). Tiles overlap by this much,
    so a tiled output equals the whole-image one up to float rounding. Attention layers are not
    counted: for transformers this is a lower bound, and whole images (when they fit) avoid it."""
    radius = 0
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            radius += max((k - 1) // 2 * d for k, d in zip(layer.kernel_size, layer.dilation,
                                                            strict=True))
    return max(radius, 16)


def _tile_size(module: nn.Module, device: torch.device) -> int | None:
    """Whole images on CUDA (the runner halves the tile on out-of-memory); on the CPU, where
    running out of memory kills the process, tiles sized so the widest layer's activations stay
    within a budget."""
    if device.type == "cuda":
        return None
    widest = max((layer.out_channels for layer in module.modules()
                  if isinstance(layer, nn.Conv2d)), default=64)
    side = int(math.sqrt(_CPU_MEMORY_BUDGET / (widest * 4 * 4)))
    return max(64, side // 8 * 8)
