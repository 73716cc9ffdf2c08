"""ONE place that builds TensorRT engines from the repo's ONNX graphs, checks an engine fits this machine, and runs it.

    metadata = build_engine("runs/onnx/efficientnet_lite0.onnx", "runs/trt/efficientnet_lite0.fp32.engine", "fp32",
                            {"images": ((1, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))},
                            timing_cache="runs/trt/timing.cache")                  # + efficientnet_lite0.fp32.json
    runner = TensorRTRunner("runs/trt/efficientnet_lite0.fp32.engine")             # checks version and GPU first
    logits = runner(images=images.cuda())["logits"]

Precision is in the ONNX graph, not in a builder flag: TensorRT 11 removed weak typing (BuilderFlag.FP16/INT8,
calibrators), so every network is strongly typed. An fp16 engine comes from an fp16 ONNX, an int8 one from an ONNX
with Q/DQ nodes; `precision` only labels what the graph holds. TensorRT 10 builds the same way with
NetworkDefinitionCreationFlag.STRONGLY_TYPED (11 ignores that flag: strong typing is always on).

An engine runs only on the TensorRT version that built it and on GPUs of the compute capability it was built for, so
each engine has a metadata JSON beside it (engine.with_suffix('.json'), as utils.onnx_export does for ONNX files)
that check_engine_compatible reads before TensorRT deserialises anything: a mismatch is one line saying to rebuild.

Runtime: the TensorRT 10+/11 name-based API (set_input_shape, set_tensor_address, execute_async_v3) on torch's
current CUDA stream; outputs are torch CUDA tensors, data-dependent ones (a detector's (D, 4) boxes) through an
IOutputAllocator backed by torch memory. `import tensorrt` happens inside the functions, so this module imports on
machines without it (CI, these CPU machines) and the checks below run there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.cli import UserError
from utils.onnx_export import metadata_path

ENGINE_FORMAT = "tensorrt_engine/1"  # bump when the metadata JSON changes layout
PRECISIONS = ("fp32", "fp16", "int8")  # labels of what the ONNX graph holds (strong typing: the graph decides)
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
def _logger() -> Any:
    """One TensorRT logger for builder and runtime (TensorRT wants a single one); warnings and errors to stderr."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def _torch_dtype_by_trt() -> dict[Any, torch.dtype]:
    import tensorrt as trt

    return {getattr(trt, name): dtype for name, dtype in _TORCH_DTYPES.items() if hasattr(trt, name)}


def _dtype_name(trt_dtype: Any) -> str:
    """'float32' for trt.float32; TensorRT's own name for a dtype torch has no match for (e.g. 'DataType.FP8')."""
    dtype = _torch_dtype_by_trt().get(trt_dtype)
    return str(dtype).removeprefix("torch.") if dtype is not None else str(trt_dtype)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(size)) for size in shape)


######################################################################################################################
# Build


def _check_profile(
    profile: dict[str, tuple[Sequence[int], Sequence[int], Sequence[int]]], inputs: dict[str, list[int]], onnx_name: str
) -> dict[str, dict[str, list[int]]]:
    """The profile as {input: {min, opt, max}} for every network input (a static input gets its own shape), checked
    against the graph so a wrong one is a UserError of one line rather than a TensorRT build log."""
    unknown = sorted(set(profile) - set(inputs))
    if unknown:
        raise UserError(f"profile names {', '.join(unknown)}, not an input of {onnx_name} (its inputs: {', '.join(inputs)})")
    checked = {}
    for name, shape in inputs.items():
        if name not in profile:
            if -1 in shape:
                raise UserError(f"input {name} of {onnx_name} has dynamic shape {shape}: give it min/opt/max shapes in the profile")
            checked[name] = {"min": list(shape), "opt": list(shape), "max": list(shape)}
            continue
        low, opt, high = ([int(size) for size in bound] for bound in profile[name])
        for bound in (low, opt, high):
            if len(bound) != len(shape) or any(fixed not in (-1, size) for fixed, size in zip(shape, bound, strict=True)):
                raise UserError(f"profile shape {_shape_text(bound)} for input {name} does not fit its ONNX shape {shape}")
        if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)) or min(low) < 0:
            raise UserError(f"profile of input {name} needs 0 <= min <= opt <= max per dimension, got {low}, {opt}, {high}")
        checked[name] = {"min": low, "opt": opt, "max": high}
    return checked


def _attach_timing_cache(config: Any, path: Path | None) -> None:
    """Load the timing cache at `path` into `config` (a new, empty one when the file is missing, corrupt or from
    another GPU/TensorRT: it only speeds builds up, so a bad one is noted and replaced, never fatal)."""
    if path is not None and path.is_file() and path.stat().st_size:
        try:
            cache = config.create_timing_cache(path.read_bytes())
        except Exception:  # TensorRT's bindings raise their own types for a blob they cannot read
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        print(f"note: timing cache {path} is unreadable or from another GPU/TensorRT: starting a new one", file=sys.stderr)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write `path` via `path`.partial + rename, so a crash never leaves a half file that looks complete."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as file:
            file.write(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def _model_description(onnx_path: Path) -> dict[str, Any]:
    """model, weights and settings from the ONNX's own metadata JSON (export_onnx wrote it), so that an engine alone
    says what it runs (the detector backend needs the model's input size); empty when there is none."""
    try:
        described = json.loads(metadata_path(onnx_path).read_text())
    except (OSError, ValueError):
        return {}
    return {key: described[key] for key in ("model", "weights", "settings") if key in described}


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    profile: dict[str, tuple[Sequence[int], Sequence[int], Sequence[int]]],
    timing_cache: str | Path | None = None,
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Build a strongly typed TensorRT engine from `onnx_path`, write it to `engine_path` and its metadata JSON beside
    it (metadata_path), and return the metadata.

    profile: {input name: (min, opt, max) shapes}, one optimisation profile; static inputs may be left out.
    precision: 'fp32', 'fp16' or 'int8', a label of what the ONNX holds (recorded, not applied).
    timing_cache: a file TensorRT's kernel timings are loaded from and saved back to (created when missing), which
    makes a rebuild on the same GPU much faster. workspace_gib: the builder's workspace memory pool limit.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: no such ONNX model (make one with utils.onnx_export.export_onnx)")
    if metadata_path(engine_path) == metadata_path(onnx_path):
        raise UserError(
            f"engine {engine_path} would overwrite the ONNX metadata {metadata_path(onnx_path)}: name it e.g. {onnx_path.stem}.{precision}.engine"
        )
    if workspace_gib <= 0:
        raise UserError(f"workspace of {workspace_gib} GiB: it must be positive")
    reason = tensorrt_missing()
    if reason:
        raise UserError(f"cannot build a TensorRT engine: {reason}")
    import tensorrt as trt

    builder = trt.Builder(_logger())
    # strong typing: always on in TensorRT 11 (the flag is ignored there), opt-in in 10
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(strongly_typed) if strongly_typed is not None and int(trt.__version__.split(".")[0]) < 11 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, _logger())
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external weights beside it are found
        first = str(parser.get_error(0)).strip().splitlines()[0] if parser.num_errors else "no error reported"
        raise UserError(f"{onnx_path}: TensorRT's ONNX parser failed ({parser.num_errors} errors, first: {first[:300]})")
    network_inputs = [network.get_input(index) for index in range(network.num_inputs)]
    network_outputs = [network.get_output(index) for index in range(network.num_outputs)]
    checked_profile = _check_profile(profile, {tensor.name: list(tensor.shape) for tensor in network_inputs}, onnx_path.name)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    optimisation_profile = builder.create_optimization_profile()
    for name, bounds in checked_profile.items():
        optimisation_profile.set_shape(name, bounds["min"], bounds["opt"], bounds["max"])
    config.add_optimization_profile(optimisation_profile)
    _attach_timing_cache(config, cache_path)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - start
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(cache_path, memoryview(config.get_timing_cache().serialize()))
    _write_atomic(engine_path, memoryview(serialized))

    env = environment()
    metadata = {
        "format": ENGINE_FORMAT,
        **_model_description(onnx_path),
        "onnx": onnx_path.name,
        "onnx_sha256": _sha256(onnx_path),
        "precision": precision,
        "profile": checked_profile,
        "inputs": [{"name": tensor.name, "shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype)} for tensor in network_inputs],
        "outputs": [{"name": tensor.name, "shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype)} for tensor in network_outputs],
        "tensorrt": trt.__version__,
        "gpu": env["gpu"],
        "compute_capability": env["compute_capability"],
        "cuda": torch.version.cuda,
        "build_seconds": round(build_seconds, 3),
        "file_bytes": engine_path.stat().st_size,
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "workspace_gib": workspace_gib,
    }
    _write_json(metadata_path(engine_path), metadata)
    return metadata


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
    bounds = f"min {_shape_text(low)}, max {_shape_text(high)}"
    shape = [int(size) for size in shape]
    if len(shape) != len(low):
        raise UserError(
            f"input {name} of shape {_shape_text(shape)} has {len(shape)} dimensions, the engine's profile {len(low)} ({bounds})"
        )
    outside = [axis for axis, (size, a, b) in enumerate(zip(shape, low, high, strict=True)) if not a <= size <= b]
    if outside:
        hint = "rebuild with a larger --batch-sizes" if outside == [0] and shape[0] > high[0] else f"{REBUILD} for this shape"
        raise UserError(f"input {name} of shape {_shape_text(shape)} is outside the engine's profile ({bounds}): {hint}")


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

        self.runtime = trt.Runtime(_logger())  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT cannot deserialise {engine_path} (its log above says why): {REBUILD}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"TensorRT cannot create an execution context for {engine_path} (out of GPU memory?)")
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        self.input_names = [name for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        self.output_names = [name for name in names if name not in self.input_names]
        dtypes = _torch_dtype_by_trt()
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
                raise UserError(f"TensorRT rejected input {name} of shape {_shape_text(feeds[name].shape)}")
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
