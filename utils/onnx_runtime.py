"""ONE place that opens ONNX Runtime sessions, and the runtime side of a detector exported by utils.onnx_export.

    session = load_onnx_session("runs/onnx/detector.onnx", threads=2)          # onnx.checker first, then a session
    session = create_session(path, threads, execution_providers(cuda=True))      # CUDA first where onnxruntime has it
    boxes, scores, labels = run_detector_session(session, frame_to_input(rgb_frame))

Every session here has the same options (intra-op threads fixed when given, one inter-op thread) and the same error:
a file ONNX Runtime cannot load is a UserError of one line. Used by the detectors (ssdlite_person, yolox_nano,
exported torchvision models; quantise.py measures its ONNX Runtime rows through them) and tensorrt_convert.py, whose
parity checks (utils.onnx_export) take these sessions. `import onnxruntime` happens inside the functions: importing
this module costs nothing until a session is made.

Bottom layer: imports nothing from utils but cli.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.cli import UserError, first_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def execution_providers(cuda: bool = False, required: bool = False) -> list[str]:
    """ONNX Runtime providers in order of preference: CPU only, or CUDA first when `cuda` and this onnxruntime has it.

    required: a CUDA provider that was asked for and is missing is a UserError (install onnxruntime-gpu) instead of a
    quiet CPU run.
    """
    if not cuda:
        return [CPU]
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if required:
        raise UserError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu); use --device cpu")
    return [CPU]


def create_session(path: str | Path, threads: int | None = None, providers: Sequence[Any] | None = None, model: bytes | None = None) -> Any:
    """An onnxruntime.InferenceSession of the model file at `path`, or of its serialised bytes `model` when given
    (a graph changed after loading; `path` then only names it in errors).

    threads: intra-op threads (None: onnxruntime's default, all cores). providers: default CPU only (see
    execution_providers); entries may be (name, options) pairs. A model ONNX Runtime cannot load: a UserError of one line.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # so that `threads` is all it uses: timings compare at a fixed thread count
    try:
        return ort.InferenceSession(str(path) if model is None else model, options, providers=list(providers or [CPU]))
    except Exception as error:  # onnxruntime raises its own exception types for bad files, graphs and providers
        raise UserError(f"{path} is not a loadable ONNX model ({first_line(error)})") from None


def load_onnx_session(path: str | Path, threads: int | None = None, providers: Sequence[Any] | None = None) -> Any:
    """create_session of the model at `path` after checking it with onnx.checker (what export_onnx wrote).

    Not a file, not ONNX, or failing the checker: a UserError of one line.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX model (make one with utils.onnx_export.export_onnx)")
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:  # protobuf DecodeError, ValidationError, ...: all mean not a valid ONNX model
        raise UserError(f"{path} is not a valid ONNX model ({type(error).__name__}: {first_line(error)})") from None
    return create_session(path, threads, providers)


######################################################################################################################
# An exported torchvision detector at run time (utils.onnx_export writes it)


def metadata_path(path: str | Path) -> Path:
    """Where export_onnx (and build_engine) write the metadata of the model at `path`: model.onnx -> model.json."""
    return Path(path).with_suffix(".json")


def frame_to_input(frame: np.ndarray) -> np.ndarray:
    """An RGB uint8 H x W x 3 frame -> the detectors' input (1, 3, H, W) float32 in [0, 1]."""
    return np.ascontiguousarray(frame.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def run_detector_session(session: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes (D, 4) float32, scores (D,), labels (D,) int64 of one (1, 3, H, W) float image, D possibly 0."""
    boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"images": image})
    return boxes.reshape(-1, 4).astype(np.float32), scores.reshape(-1), labels.reshape(-1).astype(np.int64)


def load_onnx_model(path: Path, what: str) -> Any:
    """The ONNX graph at `path` as an onnx.ModelProto, to check or adapt in memory before a session is made; a missing
    file or one that is not ONNX is a UserError of one line naming `what` it should have been."""
    import onnx  # here: onnx is only needed by the backends that adapt their graph, and costs ~0.2 s to import

    if not Path(path).is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf DecodeError and friends: all mean not an ONNX file
        raise UserError(f"{path} is not a loadable ONNX model ({type(error).__name__})") from None


def graph_dims(value: Any) -> list[int | str]:
    """The dims of an ONNX graph input or output: numbers, or names where symbolic ('?' where neither)."""
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param or "?" for dim in value.type.tensor_type.shape.dim]
