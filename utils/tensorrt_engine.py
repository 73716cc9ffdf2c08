"""ONE place that builds TensorRT engines from the repo's ONNX graphs (utils.tensorrt_runtime runs them).

    metadata = build_engine("runs/onnx/efficientnet_lite0.onnx", "runs/trt/efficientnet_lite0.fp32.engine", "fp32",
                            {"images": ((1, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))},
                            timing_cache="runs/trt/timing.cache")                  # + efficientnet_lite0.fp32.json
    runner = TensorRTRunner("runs/trt/efficientnet_lite0.fp32.engine")             # utils.tensorrt_runtime
    logits = runner(images=images.cuda())["logits"]

Precision is in the ONNX graph, not in a builder flag: TensorRT 11 removed weak typing (BuilderFlag.FP16/INT8,
calibrators), so every network is strongly typed. An fp16 engine comes from an fp16 ONNX, an int8 one from an ONNX
with Q/DQ nodes; `precision` only labels what the graph holds. TensorRT 10 builds the same way with
NetworkDefinitionCreationFlag.STRONGLY_TYPED (11 ignores that flag: strong typing is always on).

Each engine gets a metadata JSON beside it (metadata_path: engine.with_suffix('.json')) saying which TensorRT and GPU
built it, which utils.tensorrt_runtime checks before it deserialises anything. `import tensorrt` happens inside the
functions, so this module imports on machines without it (CI, these CPU machines) and its checks run there.

Top layer: a tool that works on models, above the detectors; imports onnx_runtime and tensorrt_runtime below it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.cli import UserError, first_line
from utils.onnx_runtime import metadata_path
from utils.outputs import atomic_path, write_json
from utils.tensorrt_runtime import ENGINE_FORMAT, environment, shape_text, tensorrt_missing, torch_dtypes_by_trt, trt_logger

PRECISIONS = ("fp32", "fp16", "int8")  # labels of what the ONNX graph holds (strong typing: the graph decides)


######################################################################################################################
# Build


def _dtype_name(trt_dtype: Any) -> str:
    """'float32' for trt.float32; TensorRT's own name for a dtype torch has no match for (e.g. 'DataType.FP8')."""
    dtype = torch_dtypes_by_trt().get(trt_dtype)
    return str(dtype).removeprefix("torch.") if dtype is not None else str(trt_dtype)


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
                raise UserError(f"profile shape {shape_text(bound)} for input {name} does not fit its ONNX shape {shape}")
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


def _model_description(onnx_path: Path) -> dict[str, Any]:
    """model, weights and settings from the ONNX's own metadata JSON (export_onnx wrote it), so that an engine alone
    says what it runs (the detector backend needs the model's input size); empty when there is none."""
    try:
        described = json.loads(metadata_path(onnx_path).read_text())
    except (OSError, ValueError):
        return {}
    return {key: described[key] for key in ("model", "weights", "settings") if key in described}


def _check_request(onnx_path: Path, engine_path: Path, precision: str, workspace_gib: float) -> None:
    """Refuse, in one line, what cannot be built: a wrong precision or workspace, a missing ONNX, an engine whose JSON
    would overwrite the ONNX's, a machine without TensorRT or CUDA."""
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


def _parse_network(trt: Any, onnx_path: Path) -> tuple[Any, Any, Any]:
    """(builder, strongly typed network, the parser that filled it: kept until the build, the network may use weights it holds)."""
    builder = trt.Builder(trt_logger())
    # strong typing: always on in TensorRT 11 (the flag is ignored there), opt-in in 10
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(strongly_typed) if strongly_typed is not None and int(trt.__version__.split(".")[0]) < 11 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external weights beside it are found
        first = first_line(parser.get_error(0), 300) if parser.num_errors else "no error reported"
        raise UserError(f"{onnx_path}: TensorRT's ONNX parser failed ({parser.num_errors} errors, first: {first})")
    return builder, network, parser


def _builder_config(
    trt: Any, builder: Any, checked_profile: dict[str, dict[str, list[int]]], workspace_gib: float, cache_path: Path | None
) -> Any:
    """The builder config: workspace limit, the one optimisation profile, the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    optimisation_profile = builder.create_optimization_profile()
    for name, bounds in checked_profile.items():
        optimisation_profile.set_shape(name, bounds["min"], bounds["opt"], bounds["max"])
    config.add_optimization_profile(optimisation_profile)
    _attach_timing_cache(config, cache_path)
    return config


def _build_and_write(builder: Any, network: Any, config: Any, onnx_path: Path, engine_path: Path, cache_path: Path | None) -> float:
    """Build the engine, write it (and the timing cache) atomically; returns the build time in seconds."""
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - start
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path) as partial:
            partial.write_bytes(memoryview(config.get_timing_cache().serialize()))
    with atomic_path(engine_path) as partial:
        partial.write_bytes(memoryview(serialized))
    return build_seconds


def _tensors(network: Any, count: int, get: Any) -> list[dict[str, Any]]:
    """[{name, shape, dtype}] of a network's inputs or outputs."""
    return [{"name": tensor.name, "shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype)} for tensor in map(get, range(count))]


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
    _check_request(onnx_path, engine_path, precision, workspace_gib)
    import tensorrt as trt

    builder, network, _parser = _parse_network(trt, onnx_path)
    network_inputs = _tensors(network, network.num_inputs, network.get_input)
    checked_profile = _check_profile(profile, {tensor["name"]: tensor["shape"] for tensor in network_inputs}, onnx_path.name)
    config = _builder_config(trt, builder, checked_profile, workspace_gib, cache_path)
    build_seconds = _build_and_write(builder, network, config, onnx_path, engine_path, cache_path)

    env = environment()
    metadata = {
        "format": ENGINE_FORMAT,
        **_model_description(onnx_path),
        "onnx": onnx_path.name,
        "onnx_sha256": _sha256(onnx_path),
        "precision": precision,
        "profile": checked_profile,
        "inputs": network_inputs,
        "outputs": _tensors(network, network.num_outputs, network.get_output),
        "tensorrt": trt.__version__,
        "gpu": env["gpu"],
        "compute_capability": env["compute_capability"],
        "cuda": torch.version.cuda,
        "build_seconds": round(build_seconds, 3),
        "file_bytes": engine_path.stat().st_size,
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "workspace_gib": workspace_gib,
    }
    write_json(metadata_path(engine_path), metadata)
    return metadata
