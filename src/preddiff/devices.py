"""Facts about this machine's compute devices: CPU cores and name, a usable CUDA provider,
free GPU memory.

Shared by the engines (:mod:`preddiff.incremental`) and by the measured decision between them
(:mod:`preddiff.incremental_decision`), which is why they live in neither.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess

import onnx
from onnx import TensorProto, helper

from .errors import InvalidArgument

log = logging.getLogger(__name__)

__all__ = ["available_cores", "cpu_name", "resolve_device", "gpu_free_memory"]

_CUDA_OK = None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return cpu


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _probe_model() -> onnx.ModelProto:
    """A one-node graph to try a provider with. Its opset and IR version are pinned low:
    ``onnx.helper`` stamps the newest ones it knows, which an older onnxruntime refuses (and
    the probe would then report no usable GPU on a machine that has one)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                            "probe", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def _cuda_usable() -> bool:
    """Whether the CUDA execution provider can actually create a session here."""
    global _CUDA_OK
    if _CUDA_OK is None:
        import onnxruntime as ort

        from .classifier import _cuda_device_count  # asks the driver, not onnxruntime
        from .classifier import preload_cuda_libraries

        _CUDA_OK = False
        if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_device_count():
            preload_cuda_libraries()
            so = ort.SessionOptions()
            so.log_severity_level = 4
            try:
                s = ort.InferenceSession(_probe_model().SerializeToString(), so,
                                         providers=["CUDAExecutionProvider"])
                _CUDA_OK = "CUDAExecutionProvider" in s.get_providers()
            except Exception:  # noqa: BLE001 - any failure means no usable GPU
                _CUDA_OK = False
    return _CUDA_OK


def resolve_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"`` for ``device`` in {"auto", "cpu", "cuda"}.

    As :class:`preddiff.classifier.OnnxClassifier`: "cuda" without a usable CUDA provider
    falls back to the CPU with a warning.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidArgument(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    if _cuda_usable():
        return "cuda"
    if device == "cuda":
        log.warning("CUDA requested but onnxruntime has no usable CUDA provider; using the CPU")
    return "cpu"


def gpu_free_memory(device_id: int = 0):
    """Free memory of a CUDA device in bytes (via ``nvidia-smi``), or None if unknown."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits",
                              "-i", str(device_id)], capture_output=True, text=True, timeout=10)
        return int(out.stdout.strip().splitlines()[0]) * 2**20
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
