"""ONE place that runs TensorRT engines: checks that an engine fits this machine before TensorRT sees it, then runs
it on torch CUDA tensors. utils.tensorrt_engine builds the engines; detectors and scripts only need this side.

    metadata = read_engine_metadata("runs/trt/efficientnet_lite0.fp32.engine")   # the JSON build_engine wrote beside it
    check_engine_compatible(metadata)                                              # same TensorRT, same compute capability
    runner = TensorRTRunner("runs/trt/efficientnet_lite0.fp32.engine")             # both checks, then deserialise
    logits = runner(images=images.cuda())["logits"]

An engine runs only on the TensorRT version that built it and on GPUs of the compute capability it was built for, so
each engine has a metadata JSON beside it (engine.with_suffix('.json'), as utils.onnx_export does for ONNX files)
that check_engine_compatible reads before TensorRT deserialises anything: a mismatch is one line saying to rebuild.

Runtime: the TensorRT 10+/11 name-based API (set_input_shape, set_tensor_address, execute_async_v3) on torch's
current CUDA stream; outputs are torch CUDA tensors, data-dependent ones (a detector's (D, 4) boxes) through an
IOutputAllocator backed by torch memory. `import tensorrt` happens inside the functions, so this module imports on
machines without it (CI, these CPU machines) and the checks run there.

Bottom layer: imports nothing from utils but cli and onnx_runtime (metadata_path).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.cli import UserError
from utils.onnx_runtime import metadata_path

ENGINE_FORMAT = "tensorrt_engine/1"  # bump when the metadata JSON changes layout
REBUILD = "rebuild it with tensorrt_convert.py"
INSTALL = "pip install -r requirements-gpu.txt on a CUDA machine"
# TensorRT's dtypes by their module-level aliases; getattr because bfloat16 (and others) come and go across versions
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


######################################################################################################################
# This machine


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here (not installed, no CUDA GPU), or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"tensorrt is not installed ({INSTALL})"
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible to torch {torch.__version__} (TensorRT engines run only on an NVIDIA GPU)"
    return None


def environment() -> dict[str, str | None]:
    """What an engine depends on here: {'tensorrt': version, 'gpu': name, 'compute_capability': '9.0'}, None where absent."""
    try:
        import tensorrt as trt

        version = trt.__version__
    except ImportError:
        version = None
    if not torch.cuda.is_available():
        return {"tensorrt": version, "gpu": None, "compute_capability": None}
    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": version, "gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


@functools.cache
def trt_logger() -> Any:
    """One TensorRT logger for builder and runtime (TensorRT wants a single one); warnings and errors to stderr."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def torch_dtypes_by_trt() -> dict[Any, torch.dtype]:
    """TensorRT's dtypes -> torch's, for those this TensorRT has (engine tensors are allocated as torch tensors)."""
    import tensorrt as trt

    return {getattr(trt, name): dtype for name, dtype in _TORCH_DTYPES.items() if hasattr(trt, name)}


def shape_text(shape: Sequence[int]) -> str:
    """A shape as messages write it: (8, 3, 224, 224) -> '8x3x224x224'."""
    return "x".join(str(int(size)) for size in shape)


######################################################################################################################
# Checks before TensorRT sees an engine


def read_engine_metadata(engine_path: str | Path) -> dict[str, Any]:
    """The metadata JSON build_engine wrote beside `engine_path`; a UserError when the engine or its JSON is missing,
    unreadable or of another format."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise UserError(f"{engine_path}: no such TensorRT engine (build one with tensorrt_convert.py)")
    path = metadata_path(engine_path)
    if not path.is_file():
        raise UserError(f"{engine_path} has no metadata file {path}: {REBUILD}")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not readable JSON ({type(error).__name__}): {REBUILD}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != ENGINE_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise UserError(f"{path} is not TensorRT engine metadata (format {found!r}, expected {ENGINE_FORMAT!r}): {REBUILD}")
    missing = [key for key in ("profile", "inputs", "outputs", "tensorrt", "gpu", "compute_capability") if key not in metadata]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: {REBUILD}")
    return metadata


def check_engine_compatible(metadata: dict[str, Any], env: dict[str, str | None] | None = None) -> None:
    """A UserError of one line when the engine described by `metadata` cannot run here: TensorRT missing, another
    TensorRT version (engines are not portable across versions), another compute capability. Same capability on a GPU
    of another name: a warning on stderr, and it runs. env: environment() by default."""
    env = environment() if env is None else env
    built = f"the engine built from {metadata.get('onnx', '?')} with TensorRT {metadata['tensorrt']}"
    if env.get("tensorrt") is None:
        raise UserError(f"{built} needs TensorRT, which is not installed here ({INSTALL}, or {REBUILD} where it is)")
    if env["tensorrt"] != metadata["tensorrt"]:
        raise UserError(f"{built} cannot run on TensorRT {env['tensorrt']} here (engines are not portable across versions): {REBUILD}")
    if env.get("compute_capability") is None:
        raise UserError(f"{built} needs a CUDA GPU and torch sees none here (run it on the GPU machine it was built for)")
    if env["compute_capability"] != metadata["compute_capability"]:
        raise UserError(
            f"{built} was built for {metadata['gpu']} (sm {metadata['compute_capability']}), "
            f"this GPU is {env['gpu']} (sm {env['compute_capability']}): {REBUILD}"
        )
    if env.get("gpu") != metadata["gpu"]:
        print(
            f"warning: {built} was built on {metadata['gpu']}, running on {env['gpu']} (same sm {env['compute_capability']}: "
            "it runs, but its kernels were timed on the other GPU)",
            file=sys.stderr,
        )


def check_input_shape(metadata: dict[str, Any], name: str, shape: Sequence[int]) -> None:
    """A UserError when `name` is not an input of the engine or `shape` lies outside its optimisation profile."""
    profile = metadata["profile"]
    if name not in profile:
        raise UserError(f"{name} is not an input of the engine (its inputs: {', '.join(profile)})")
    low, high = profile[name]["min"], profile[name]["max"]
    bounds = f"min {shape_text(low)}, max {shape_text(high)}"
    shape = [int(size) for size in shape]
    if len(shape) != len(low):
        raise UserError(
            f"input {name} of shape {shape_text(shape)} has {len(shape)} dimensions, the engine's profile {len(low)} ({bounds})"
        )
    outside = [axis for axis, (size, a, b) in enumerate(zip(shape, low, high, strict=True)) if not a <= size <= b]
    if outside:
        hint = "rebuild with a larger --batch-sizes" if outside == [0] and shape[0] > high[0] else f"{REBUILD} for this shape"
        raise UserError(f"input {name} of shape {shape_text(shape)} is outside the engine's profile ({bounds}): {hint}")


######################################################################################################################
# Run


def _output_allocator(device: torch.device) -> Any:
    """A trt.IOutputAllocator for one data-dependent output: TensorRT asks it for `size` bytes once it knows them, and
    reports the shape; the memory is a torch uint8 tensor kept and grown across calls."""
    import tensorrt as trt

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffer: torch.Tensor | None = None
            self.shape: tuple[int, ...] | None = None

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int, stream: int) -> int:
            # 0 bytes (no detections) would be a null pointer, which means failure; 16-byte alignment lets any dtype view it
            size, alignment = max(int(size), 1), max(int(alignment), 16)
            if self.buffer is None or self.buffer.numel() < size or self.buffer.data_ptr() % alignment:
                raw = torch.empty(size + alignment, dtype=torch.uint8, device=device)
                offset = -raw.data_ptr() % alignment
                self.buffer = raw[offset : offset + size]
            return self.buffer.data_ptr()

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:  # older bindings call this one
            return self.reallocate_output_async(tensor_name, memory, size, alignment, 0)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shape = tuple(int(size) for size in shape)

    return TorchOutputAllocator()


class TensorRTRunner:
    """A deserialised engine, run on torch CUDA tensors: `runner(images=batch)` -> {'logits': tensor}.

    Checked before TensorRT sees the file (read_engine_metadata, check_engine_compatible) and every call's input
    shapes against the profile (check_input_shape), so a wrong engine or shape is a UserError, not a TensorRT crash.
    """

    def __init__(self, engine_path: str | Path, device: str | torch.device = "cuda") -> None:
        self.metadata = read_engine_metadata(engine_path)
        check_engine_compatible(self.metadata)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise UserError(f"TensorRT engines run on a CUDA device, not {self.device}")
        if self.device.index is not None:
            torch.cuda.set_device(self.device)
        import tensorrt as trt

        self.runtime = trt.Runtime(trt_logger())  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT cannot deserialise {engine_path} (its log above says why): {REBUILD}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"TensorRT cannot create an execution context for {engine_path} (out of GPU memory?)")
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        self.input_names = [name for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        self.output_names = [name for name in names if name not in self.input_names]
        dtypes = torch_dtypes_by_trt()
        self.dtypes: dict[str, torch.dtype] = {}
        for name in names:
            trt_dtype = self.engine.get_tensor_dtype(name)
            if trt_dtype not in dtypes:
                raise UserError(f"engine tensor {name} has dtype {trt_dtype}, which torch cannot hold: export it with another precision")
            self.dtypes[name] = dtypes[trt_dtype]
        # Data dependence is structural: an output still -1 once all input shapes are set (here the profile's opt) is
        # one whose size only the kernels know, e.g. NonZero; those get an allocator TensorRT calls back into.
        for name in self.input_names:
            self.context.set_input_shape(name, tuple(self.metadata["profile"][name]["opt"]))
        self.allocators = {
            name: _output_allocator(self.device) for name in self.output_names if -1 in tuple(self.context.get_tensor_shape(name))
        }
        for name, allocator in self.allocators.items():
            if not self.context.set_output_allocator(name, allocator):
                raise UserError(f"TensorRT refused an output allocator for {name} of {engine_path}")

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the engine on CUDA tensors named as its inputs; a dict of CUDA output tensors, each its own memory."""
        if set(inputs) != set(self.input_names):
            raise UserError(f"the engine takes inputs {', '.join(self.input_names)}, got {', '.join(inputs) or 'none'}")
        feeds = {}
        for name in self.input_names:
            check_input_shape(self.metadata, name, inputs[name].shape)
            feeds[name] = inputs[name].to(self.device, self.dtypes[name]).contiguous()  # kept alive until the run ends
            if not self.context.set_input_shape(name, tuple(feeds[name].shape)):
                raise UserError(f"TensorRT rejected input {name} of shape {shape_text(feeds[name].shape)}")
            self.context.set_tensor_address(name, feeds[name].data_ptr())
        outputs = {}
        for name in self.output_names:
            if name in self.allocators:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            # one element at least: an empty tensor's data_ptr() is 0, which TensorRT takes for a missing address
            memory = torch.empty(max(math.prod(shape), 1), dtype=self.dtypes[name], device=self.device)
            outputs[name] = memory[: math.prod(shape)].view(shape)
            self.context.set_tensor_address(name, memory.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise UserError("TensorRT failed to run the engine (its log above says why)")
        if self.allocators:
            stream.synchronize()  # the data-dependent shapes are reported once the kernels that decide them have run
        for name, allocator in self.allocators.items():
            if allocator.shape is None or allocator.buffer is None:
                raise UserError(f"TensorRT reported no shape for output {name}")
            count = math.prod(allocator.shape)
            item_bytes = torch.empty(0, dtype=self.dtypes[name]).element_size()
            # a copy: the allocator's buffer is reused by the next call
            outputs[name] = allocator.buffer[: count * item_bytes].view(self.dtypes[name]).view(allocator.shape).clone()
        return {name: outputs[name] for name in self.output_names}
