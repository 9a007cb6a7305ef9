"""srcompress: compress image super-resolution models.

The library API mirrors the command line: each command is a thin layer over one function here.

    import srcompress
    result = srcompress.distill("teacher.pth", method="dukd", iters=2000)
    srcompress.evaluate(result.student, ["Set5"])
"""

from srcompress._version import __version__
from srcompress.data.resize import imresize
from srcompress.errors import SRCompressError, UserInputError, WorkFailedError
from srcompress.evaluation import evaluate
from srcompress.export.onnx import export_onnx
from srcompress.inference import upscale
from srcompress.models import LoadedModel, build_model, load_model, save_model
from srcompress.train.distill import distill
from srcompress.train.quantize import quantize

__all__ = [
    "LoadedModel",
    "SRCompressError",
    "UserInputError",
    "WorkFailedError",
    "__version__",
    "build_model",
    "distill",
    "evaluate",
    "export_onnx",
    "imresize",
    "load_model",
    "quantize",
    "save_model",
    "upscale",
]
