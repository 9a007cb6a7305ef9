"""srcompress: compress image super-resolution models.

The library API mirrors the command line: each command is a thin layer over one function here.
"""

from srcompress._version import __version__
from srcompress.errors import SRCompressError, UserInputError, WorkFailedError
from srcompress.models import LoadedModel, build_model, load_model, save_model
from srcompress.quant import quantize

__all__ = [
    "LoadedModel",
    "SRCompressError",
    "UserInputError",
    "WorkFailedError",
    "__version__",
    "build_model",
    "load_model",
    "quantize",
    "save_model",
]
