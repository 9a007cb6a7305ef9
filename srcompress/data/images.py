"""Reading and writing images, with one policy for every odd file a user may hand us.

Everything becomes a 3×H×W float32 tensor in [0, 1]:

- greyscale (8- or 16-bit) becomes three identical channels, as the benchmark protocol does for
  Set14's `bridge.png`;
- an alpha channel is dropped (SR models and metrics work on colour only; compositing onto a
  background would change the colours we compare against), with a warning when it is not fully
  opaque, because then the picture the user sees differs from the one we process;
- 16-bit PNGs keep their full precision (Pillow would truncate 16-bit RGB to 8 bits, so they are
  decoded by pypng) and are scaled by 1/65535;
- palette images are expanded to RGB;
- EXIF orientation is ignored: benchmark and training images never rely on it, and rotating would
  misalign an HR image with an LR file made from its stored pixels.

Files that are not images, or are corrupt, raise `UserInputError` naming the file. So do images
whose header claims more pixels than `max_pixels` (`DEFAULT_MAX_PIXELS`, or the environment's
`SRCOMPRESS_MAX_PIXELS`, which `srcompress --max-pixels` sets): a few hundred bytes of PNG can
claim 100000x100000 pixels, and decoding them would take hundreds of gigabytes. The size is read
from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import png
import torch
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from srcompress.errors import UserInputError
from srcompress.files import atomic_path

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BIT_DEPTH_OFFSET = 24  # signature (8) + IHDR length and type (8) + width and height (8)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}

MAX_PIXELS_VARIABLE = "SRCOMPRESS_MAX_PIXELS"
# 8192x8192: above the largest camera photographs (~100 MP sensors aside), and already a 1-gigapixel
# result at x4; larger inputs are almost always a mistake or a decompression bomb.
DEFAULT_MAX_PIXELS = 8192 * 8192


def pixel_limit(max_pixels: int | None = None) -> int:
    """`max_pixels`, else `$SRCOMPRESS_MAX_PIXELS`, else `DEFAULT_MAX_PIXELS`."""
    if max_pixels is not None:
        return max_pixels
    configured = os.environ.get(MAX_PIXELS_VARIABLE, "")
    return int(configured) if configured.isdigit() else DEFAULT_MAX_PIXELS


def _check_size(path: Path, width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise UserInputError(
            f"{path} is {width}x{height} ({width * height:,} pixels), above the limit of "
            f"{limit:,} pixels: pass `srcompress --max-pixels N` (before the command) to allow "
            "larger images.")


def _drop_alpha(channels: Tensor, opaque: float, path: Path) -> Tensor:
    """Colour channels of a C×H×W integer tensor whose last channel is alpha."""
    if bool((channels[-1] != opaque).any()):
        warnings.warn(f"{path}: the alpha channel is ignored; transparent pixels keep their "
                      "stored colour.", stacklevel=3)
    return channels[:-1]


def _to_rgb_float(channels: Tensor, peak: float, path: Path) -> Tensor:
    """C×H×W integer tensor (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) → 3×H×W float32 in [0, 1]."""
    if channels.shape[0] in (2, 4):
        channels = _drop_alpha(channels, peak, path)
    image = channels.to(torch.float32) / peak
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.contiguous()


def _read_png16(path: Path, data: bytes, limit: int) -> Tensor:
    try:
        width, height, rows, info = png.Reader(bytes=data).asDirect()
        _check_size(path, width, height, limit)
        pixels = np.vstack([np.asarray(row, dtype=np.int32) for row in rows])
    except (png.Error, ValueError, zlib.error) as error:
        raise UserInputError(f"{path} is not a readable PNG image ({error}).") from None
    planes = info["planes"]
    channels = torch.from_numpy(pixels.reshape(height, width, planes)).permute(2, 0, 1)
    return _to_rgb_float(channels, float(2 ** info["bitdepth"] - 1), path)


def _open_unbounded(data: bytes) -> Image.Image:
    """Open lazily (header only) without Pillow's own bomb limit: ours is checked on the size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _read_with_pillow(path: Path, data: bytes, limit: int) -> Tensor:
    # Pillow warns about damaged metadata it skips (TIFF tags...): the pixels decide, and a
    # damaged image raises below, so its warnings would only print noise before our sentence.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        return _decode_with_pillow(path, data, limit)


def _decode_with_pillow(path: Path, data: bytes, limit: int) -> Tensor:
    try:
        with _open_unbounded(data) as image:
            _check_size(path, *image.size, limit)
            image.load()
            if image.mode in _SIXTEEN_BIT_MODES:
                grey = np.asarray(image, dtype=np.uint16).astype(np.int32)
                return _to_rgb_float(torch.from_numpy(grey)[None], 65535.0, path)
            if image.mode in ("I", "F"):
                raise UserInputError(
                    f"{path} holds 32-bit {image.mode} pixels, which have no fixed range; "
                    "convert it to an 8- or 16-bit PNG.")
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                channels = torch.from_numpy(np.array(rgba)).permute(2, 0, 1).to(torch.int32)
                return _to_rgb_float(channels, 255.0, path)
            rgb = np.array(image.convert("RGB"))
    except UnidentifiedImageError:
        # Pillow's message names its BytesIO buffer, not the file: say it in our words instead.
        raise UserInputError(f"{path} is not an image file Pillow can identify "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}).") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UserInputError(f"{path} is not a readable image ({error}).") from None
    return _to_rgb_float(torch.from_numpy(rgb).permute(2, 0, 1), 255.0, path)


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Tensor:
    """Read an image file as a 3×H×W float32 RGB tensor in [0, 1] (policy in the module doc).

    Images of more than `max_pixels` pixels are refused (default: `pixel_limit()`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserInputError(f"Image {path} does not exist.") from None
    except IsADirectoryError:
        raise UserInputError(f"{path} is a folder, not an image file.") from None
    except OSError as error:
        raise UserInputError(f"Cannot read image {path} ({error.strerror}).") from None
    limit = pixel_limit(max_pixels)
    if data.startswith(_PNG_SIGNATURE) and data[_PNG_BIT_DEPTH_OFFSET:][:1] == b"\x10":
        return _read_png16(path, data, limit)
    return _read_with_pillow(path, data, limit)


def to_uint8(image: Tensor) -> NDArray[np.uint8]:
    """A `3×H×W` (or `1×3×H×W`) [0, 1] tensor as the uint8 `H×W×3` array a saved PNG would hold."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise UserInputError(
            f"to_uint8 expects a 3×H×W image tensor, got shape {tuple(image.shape)}.")
    scaled = (image.detach().float().clamp(0, 1) * 255).round()
    return scaled.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def write_image(path: str | os.PathLike[str], image: Tensor) -> Path:
    """Save a 3×H×W [0, 1] tensor as an 8-bit RGB PNG, atomically (no half-written file)."""
    path = Path(path)
    pixels = Image.fromarray(to_uint8(image), mode="RGB")
    with atomic_path(path) as temporary:
        pixels.save(temporary, format="PNG")
    return path


def is_image_file(path: Path) -> bool:
    """True for visible files with an image extension (hidden files are editor or OS litter)."""
    return (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
            and not path.name.startswith("."))


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; other files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder of images.")
    images = sorted(path for path in folder.iterdir() if is_image_file(path))
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UserInputError(f"{folder} contains no images ({extensions}).")
    return images
