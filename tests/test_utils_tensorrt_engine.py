"""utils.tensorrt_engine (building) and utils.tensorrt_runtime (checking and running): the checks that run anywhere
(CI, CPU machines), build_engine against a stand-in `tensorrt` module that records what it is asked, and, marked
`tensorrt`, real builds and runs on a GPU."""

import json
import sys
import types

import pytest
import torch
from torch import nn

from utils import tensorrt_runtime
from utils.cli import UserError
from utils.onnx_runtime import metadata_path
from utils.tensorrt_engine import build_engine
from utils.tensorrt_runtime import (
    ENGINE_FORMAT,
    TensorRTRunner,
    check_engine_compatible,
    check_input_shape,
    read_engine_metadata,
    tensorrt_missing,
)

H100 = {"tensorrt": "11.4.0.106", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def engine_metadata(**changes):
    """Metadata as build_engine writes it for a classifier with a batch 1..8 profile, built on an H100."""
    metadata = {
        "format": ENGINE_FORMAT,
        "onnx": "efficientnet_lite0.onnx",
        "onnx_sha256": "0" * 64,
        "precision": "fp32",
        "profile": {"images": {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]}},
        "inputs": [{"name": "images", "shape": [-1, 3, 224, 224], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [-1, 1000], "dtype": "float32"}],
        "tensorrt": "11.4.0.106",
        "gpu": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "cuda": "13.0",
        "build_seconds": 12.5,
        "file_bytes": 1234,
        "timing_cache": None,
        "workspace_gib": 4.0,
    }
    metadata.update(changes)
    return metadata


######################################################################################################################
# check_engine_compatible


def test_same_tensorrt_and_gpu_passes_silently(capsys):
    check_engine_compatible(engine_metadata(), dict(H100))
    assert capsys.readouterr().err == ""


def test_other_tensorrt_version_is_refused_naming_both():
    with pytest.raises(UserError, match=r"rebuild it with tensorrt_convert\.py") as error:
        check_engine_compatible(engine_metadata(tensorrt="10.13.3.9"), dict(H100))
    assert "10.13.3.9" in str(error.value) and "11.4.0.106" in str(error.value)
    assert "\n" not in str(error.value)


def test_other_compute_capability_is_refused_naming_both_gpus():
    a100 = {"tensorrt": "11.4.0.106", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    with pytest.raises(UserError, match=r"rebuild it with tensorrt_convert\.py") as error:
        check_engine_compatible(engine_metadata(gpu="NVIDIA A100-SXM4-80GB", compute_capability="8.0"), dict(H100))
    message = str(error.value)
    assert "NVIDIA A100-SXM4-80GB (sm 8.0)" in message and "NVIDIA H100 80GB HBM3 (sm 9.0)" in message
    with pytest.raises(UserError, match=r"sm 9\.0.*sm 8\.0"):
        check_engine_compatible(engine_metadata(), a100)


def test_same_capability_other_gpu_name_warns_and_passes(capsys):
    h100_pcie = {**H100, "gpu": "NVIDIA H100 PCIe"}
    check_engine_compatible(engine_metadata(), h100_pcie)
    err = capsys.readouterr().err
    assert "warning" in err and "NVIDIA H100 PCIe" in err and "NVIDIA H100 80GB HBM3" in err
    assert err.count("\n") == 1


def test_no_tensorrt_or_no_gpu_here_is_refused():
    with pytest.raises(UserError, match="not installed"):
        check_engine_compatible(engine_metadata(), {"tensorrt": None, "gpu": None, "compute_capability": None})
    with pytest.raises(UserError, match="CUDA GPU"):
        check_engine_compatible(engine_metadata(), {"tensorrt": "11.4.0.106", "gpu": None, "compute_capability": None})


def test_tensorrt_missing_gives_a_reason_here():
    reason = tensorrt_missing()
    if reason is None:  # a GPU machine with TensorRT: nothing to check here
        pytest.skip("TensorRT and a GPU are present")
    assert isinstance(reason, str) and ("tensorrt" in reason or "CUDA" in reason)


######################################################################################################################
# check_input_shape


def test_input_shape_inside_the_profile_passes():
    for shape in [(1, 3, 224, 224), (8, 3, 224, 224), torch.Size([5, 3, 224, 224])]:
        check_input_shape(engine_metadata(), "images", shape)


def test_batch_above_the_profile_names_min_and_max():
    with pytest.raises(UserError) as error:
        check_input_shape(engine_metadata(), "images", (16, 3, 224, 224))
    assert str(error.value) == (
        "input images of shape 16x3x224x224 is outside the engine's profile (min 1x3x224x224, max 8x3x224x224): "
        "rebuild with a larger --batch-sizes"
    )


def test_other_size_or_batch_zero_is_outside_the_profile():
    with pytest.raises(UserError, match=r"outside the engine's profile.*tensorrt_convert\.py"):
        check_input_shape(engine_metadata(), "images", (2, 3, 256, 256))
    with pytest.raises(UserError, match="outside the engine's profile"):
        check_input_shape(engine_metadata(), "images", (0, 3, 224, 224))


def test_wrong_rank_and_unknown_input_are_refused():
    with pytest.raises(UserError, match="3 dimensions"):
        check_input_shape(engine_metadata(), "images", (3, 224, 224))
    with pytest.raises(UserError, match=r"pixels is not an input of the engine.*images"):
        check_input_shape(engine_metadata(), "pixels", (1, 3, 224, 224))


######################################################################################################################
# read_engine_metadata


@pytest.fixture
def engine_file(tmp_path):
    path = tmp_path / "model.fp32.engine"
    path.write_bytes(b"not really an engine")
    return path


def test_read_engine_metadata_round_trip(engine_file):
    metadata_path(engine_file).write_text(json.dumps(engine_metadata()))
    assert read_engine_metadata(engine_file) == engine_metadata()


def test_missing_engine_or_json_is_a_user_error(tmp_path, engine_file):
    with pytest.raises(UserError, match="no such TensorRT engine"):
        read_engine_metadata(tmp_path / "absent.engine")
    with pytest.raises(UserError, match=r"no metadata file.*tensorrt_convert\.py"):
        read_engine_metadata(engine_file)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"format": "tensorrt_engine/1", "profile"', "not readable JSON"),
        (json.dumps(engine_metadata(format="onnx_export/1")), "format 'onnx_export/1'"),
        (json.dumps([1, 2]), "not TensorRT engine metadata"),
        (json.dumps({k: v for k, v in engine_metadata().items() if k != "compute_capability"}), "lacks compute_capability"),
    ],
)
def test_corrupt_or_foreign_json_is_a_user_error(engine_file, text, match):
    metadata_path(engine_file).write_text(text)
    with pytest.raises(UserError, match=match):
        read_engine_metadata(engine_file)


######################################################################################################################
# build_engine against a stand-in tensorrt module (what it asks TensorRT for, and what it writes)


class FakeTensor:
    def __init__(self, name, shape, dtype="DT_FLOAT"):
        self.name, self.shape, self.dtype = name, shape, dtype


class FakeNetwork:
    def __init__(self, flags):
        self.flags = flags
        self.inputs = [FakeTensor("images", (-1, 3, 8, 8)), FakeTensor("scale", (1,))]
        self.outputs = [FakeTensor("logits", (-1, 10)), FakeTensor("keep", (-1,), "DT_BOOL")]
        self.num_inputs, self.num_outputs = len(self.inputs), len(self.outputs)

    def get_input(self, index):
        return self.inputs[index]

    def get_output(self, index):
        return self.outputs[index]


class FakeParser:
    def __init__(self, network, logger):
        self.errors = []

    def parse_from_file(self, path):
        with open(path, "rb") as file:
            bad = file.read().startswith(b"bad")
        if bad:
            self.errors = ["In node 3 (Foo): UNSUPPORTED_NODE: no importer for op Foo\nmore detail", "second error"]
        self.num_errors = len(self.errors)
        return not self.errors

    def get_error(self, index):
        return self.errors[index]


class FakeCache:
    def __init__(self, data):
        self.data = data

    def serialize(self):
        return self.data + b"+timings"


class FakeConfig:
    def __init__(self, log):
        self.log = log

    def set_memory_pool_limit(self, pool, size):
        self.log["pool"] = (pool, size)

    def add_optimization_profile(self, profile):
        self.log["profile"] = profile.shapes

    def create_timing_cache(self, data):
        return None if data.startswith(b"garbage") else FakeCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        self.log.setdefault("caches_loaded", []).append(cache.data)
        return True

    def get_timing_cache(self):
        return self.cache


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = (list(low), list(opt), list(high))


def fake_tensorrt(version, log, engine=b"ENGINE-BYTES"):
    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            log["flags"] = flags
            return FakeNetwork(flags)

        def create_builder_config(self):
            return FakeConfig(log)

        def create_optimization_profile(self):
            return FakeProfile()

        def build_serialized_network(self, network, config):
            return engine

    class Logger:
        WARNING = "warning"

        def __init__(self, severity):
            pass

    return types.SimpleNamespace(
        __version__=version,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=FakeParser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        float32="DT_FLOAT",
        bool="DT_BOOL",
    )


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A stand-in tensorrt 10.9 on a pretend H100; yields (install(version, engine) -> log, onnx path)."""

    def install(version="10.9.0.34", engine=b"ENGINE-BYTES"):
        log = {}
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, log, engine))
        tensorrt_runtime.trt_logger.cache_clear()
        return log

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H100 80GB HBM3")
    onnx_path = tmp_path / "tiny.onnx"
    onnx_path.write_bytes(b"graph")
    yield install, onnx_path
    tensorrt_runtime.trt_logger.cache_clear()  # the real tensorrt must not get the stand-in's logger


PROFILE = {"images": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}


def test_build_writes_engine_and_metadata(fake_gpu, tmp_path):
    install, onnx_path = fake_gpu
    log = install()
    engine_path = tmp_path / "out" / "tiny.fp32.engine"
    metadata = build_engine(onnx_path, engine_path, "fp32", PROFILE, workspace_gib=0.5)
    assert engine_path.read_bytes() == b"ENGINE-BYTES"
    assert not list(engine_path.parent.glob("*.partial"))
    assert json.loads(metadata_path(engine_path).read_text()) == metadata == read_engine_metadata(engine_path)
    assert log["flags"] == 1  # 1 << STRONGLY_TYPED on TensorRT 10
    assert log["pool"] == ("workspace", 1 << 29)
    # the static input gets its own shape as min = opt = max, so check_input_shape can check it too
    assert log["profile"] == {"images": ([1, 3, 8, 8], [4, 3, 8, 8], [8, 3, 8, 8]), "scale": ([1], [1], [1])}
    assert metadata["profile"]["scale"] == {"min": [1], "opt": [1], "max": [1]}
    assert metadata["inputs"][0] == {"name": "images", "shape": [-1, 3, 8, 8], "dtype": "float32"}
    assert metadata["outputs"][1] == {"name": "keep", "shape": [-1], "dtype": "bool"}
    assert metadata["onnx"] == "tiny.onnx" and len(metadata["onnx_sha256"]) == 64
    assert (metadata["tensorrt"], metadata["gpu"], metadata["compute_capability"]) == ("10.9.0.34", "NVIDIA H100 80GB HBM3", "9.0")
    assert metadata["file_bytes"] == len(b"ENGINE-BYTES") and metadata["timing_cache"] is None
    check_engine_compatible(metadata)  # this (pretend) machine built it, so it may run it
    with pytest.raises(UserError, match="larger --batch-sizes"):
        check_input_shape(metadata, "images", (9, 3, 8, 8))


def test_tensorrt_11_creates_the_network_without_flags(fake_gpu, tmp_path):
    install, onnx_path = fake_gpu
    log = install("11.4.0.106")
    build_engine(onnx_path, tmp_path / "tiny.engine.plan", "fp16", PROFILE)
    assert log["flags"] == 0  # strong typing is always on in 11; the flag is deprecated there


def test_timing_cache_is_created_reused_and_a_corrupt_one_replaced(fake_gpu, tmp_path, capsys):
    install, onnx_path = fake_gpu
    cache = tmp_path / "caches" / "timing.cache"
    log = install()
    metadata = build_engine(onnx_path, tmp_path / "a.engine", "fp32", PROFILE, timing_cache=cache)
    assert log["caches_loaded"] == [b""] and cache.read_bytes() == b"+timings"
    assert metadata["timing_cache"] == str(cache)
    log = install()
    build_engine(onnx_path, tmp_path / "b.engine", "fp32", PROFILE, timing_cache=cache)
    assert log["caches_loaded"] == [b"+timings"] and cache.read_bytes() == b"+timings+timings"
    assert capsys.readouterr().err == ""
    cache.write_bytes(b"garbage")
    log = install()
    build_engine(onnx_path, tmp_path / "c.engine", "fp32", PROFILE, timing_cache=cache)
    assert log["caches_loaded"] == [b""] and cache.read_bytes() == b"+timings"
    err = capsys.readouterr().err
    assert "timing cache" in err and err.count("\n") == 1


def test_parser_error_is_one_line_with_the_first_error(fake_gpu, tmp_path):
    install, onnx_path = fake_gpu
    install()
    onnx_path.write_bytes(b"bad graph")
    with pytest.raises(UserError, match=r"2 errors, first: In node 3 \(Foo\): UNSUPPORTED_NODE") as error:
        build_engine(onnx_path, tmp_path / "tiny.fp32.engine", "fp32", PROFILE)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "tiny.fp32.engine").exists()


def test_failed_build_leaves_no_engine(fake_gpu, tmp_path):
    install, onnx_path = fake_gpu
    install(engine=None)
    with pytest.raises(UserError, match="could not build an engine"):
        build_engine(onnx_path, tmp_path / "tiny.fp32.engine", "fp32", PROFILE)
    assert list(tmp_path.iterdir()) == [onnx_path]


@pytest.mark.parametrize(
    ("profile", "match"),
    [
        ({"pixels": PROFILE["images"], **PROFILE}, "pixels, not an input of tiny.onnx"),
        ({}, "input images of tiny.onnx has dynamic shape"),
        ({"images": ((1, 3, 8), (4, 3, 8), (8, 3, 8))}, "does not fit its ONNX shape"),
        ({"images": ((1, 3, 9, 8), (4, 3, 9, 8), (8, 3, 9, 8))}, "does not fit its ONNX shape"),
        ({"images": ((4, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))}, "min <= opt <= max"),
    ],
)
def test_bad_profile_is_a_user_error(fake_gpu, tmp_path, profile, match):
    install, onnx_path = fake_gpu
    install()
    with pytest.raises(UserError, match=match):
        build_engine(onnx_path, tmp_path / "tiny.fp32.engine", "fp32", profile)


def test_build_refuses_bad_arguments_before_tensorrt(tmp_path):
    onnx_path = tmp_path / "model.onnx"
    with pytest.raises(UserError, match="no such ONNX model"):
        build_engine(onnx_path, tmp_path / "model.fp32.engine", "fp32", PROFILE)
    onnx_path.write_bytes(b"graph")
    with pytest.raises(UserError, match="precision 'int4'"):
        build_engine(onnx_path, tmp_path / "model.fp32.engine", "int4", PROFILE)
    with pytest.raises(UserError, match="would overwrite the ONNX metadata"):  # model.engine -> model.json, like model.onnx
        build_engine(onnx_path, tmp_path / "model.engine", "fp32", PROFILE)
    if tensorrt_missing():
        with pytest.raises(UserError, match="cannot build a TensorRT engine"):
            build_engine(onnx_path, tmp_path / "model.fp32.engine", "fp32", PROFILE)


######################################################################################################################
# On a GPU with TensorRT


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 5)

    def forward(self, images):
        return self.head(self.features(images))


class PositiveValues(nn.Module):
    """x[x > 0] * 2: an output whose length only the data decides (NonZero in ONNX)."""

    def forward(self, values):
        return values[values > 0] * 2


def export(model, example, path, input_name, output_name):
    torch.onnx.export(
        model.eval(),
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: {0: "batch"}},
    )
    return path


@pytest.mark.tensorrt
def test_classifier_engine_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier().eval()
    onnx_path = export(model, torch.rand(2, 3, 16, 16), tmp_path / "tiny.onnx", "images", "logits")
    profile = {"images": ((1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))}
    cache = tmp_path / "timing.cache"
    engine_path = tmp_path / "tiny.fp32.engine"
    metadata = build_engine(onnx_path, engine_path, "fp32", profile, timing_cache=cache, workspace_gib=1.0)
    for key in ("format", "onnx_sha256", "profile", "inputs", "outputs", "tensorrt", "gpu", "compute_capability", "cuda", "build_seconds"):
        assert metadata[key] is not None, key
    assert metadata["profile"]["images"]["max"] == [8, 3, 16, 16]
    assert metadata["outputs"][0]["name"] == "logits" and metadata["outputs"][0]["dtype"] == "float32"
    assert cache.stat().st_size > 0

    runner = TensorRTRunner(engine_path)
    assert runner.input_names == ["images"] and runner.output_names == ["logits"]
    for batch in (1, 8):
        images = torch.rand(batch, 3, 16, 16)
        with torch.inference_mode():
            expected = model(images)
        logits = runner(images=images.cuda())["logits"]
        assert logits.is_cuda and logits.shape == (batch, 5)
        assert (logits.cpu() - expected).abs().max() < 1e-3
    first = runner(images=torch.ones(2, 3, 16, 16, device="cuda"))["logits"].clone()
    runner(images=torch.zeros(2, 3, 16, 16, device="cuda"))
    assert torch.equal(runner(images=torch.ones(2, 3, 16, 16, device="cuda"))["logits"], first)
    with pytest.raises(UserError, match="outside the engine's profile"):
        runner(images=torch.rand(9, 3, 16, 16, device="cuda"))
    with pytest.raises(UserError, match="takes inputs images"):
        runner(pixels=torch.rand(1, 3, 16, 16, device="cuda"))

    size_after_first = cache.stat().st_size
    rebuilt = build_engine(onnx_path, tmp_path / "again.fp32.engine", "fp32", profile, timing_cache=cache, workspace_gib=1.0)
    assert rebuilt["timing_cache"] == str(cache) and cache.stat().st_size >= size_after_first


@pytest.mark.tensorrt
def test_data_dependent_output_goes_through_the_allocator(tmp_path):
    onnx_path = export(PositiveValues(), torch.randn(2, 6), tmp_path / "positive.onnx", "values", "positive")
    engine_path = tmp_path / "positive.fp32.engine"
    build_engine(onnx_path, engine_path, "fp32", {"values": ((1, 6), (2, 6), (4, 6))})
    runner = TensorRTRunner(engine_path)
    assert "positive" in runner.allocators
    values = torch.tensor([[1.0, -2.0, 3.0, 0.0, -1.0, 5.0], [-1.0, 2.0, -3.0, 4.0, 0.5, -0.5]])
    first = runner(values=values.cuda())["positive"]
    assert torch.equal(first.cpu(), values[values > 0] * 2)
    empty = runner(values=-torch.ones(3, 6, device="cuda"))["positive"]
    assert empty.shape == (0,)
    assert torch.equal(first.cpu(), values[values > 0] * 2)  # still valid after the next call
    many = torch.rand(4, 6) + 0.1
    assert torch.equal(runner(values=many.cuda())["positive"].cpu(), many.flatten() * 2)
