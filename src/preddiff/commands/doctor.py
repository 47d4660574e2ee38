"""``preddiff doctor``: which onnxruntime execution provider will run, the versions, and why
not CUDA when it is not; whether the Dask cluster extra is there.

A fresh GPU machine with only the NVIDIA driver runs on CUDA after
``pip install 'preddiff[gpu]'`` (``onnxruntime-gpu[cuda,cudnn]``: the CUDA and cuDNN libraries
as pip packages, loaded by ``onnxruntime.preload_dlls()``, see
:func:`preddiff.classifier.preload_cuda_libraries`). This command says what is missing when it
does not.
"""
from __future__ import annotations

import argparse
import platform
import sys

ORDER = 90

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def register(subparsers) -> None:
    """Add the ``doctor`` sub-command."""
    p = subparsers.add_parser(
        "doctor",
        help="which execution provider will run (CUDA or CPU), versions, and why not CUDA",
        description="Print the versions that shape the numbers, the onnxruntime execution "
        "provider preddiff will use (with --device auto) and, when it is not CUDA, why; and "
        "whether the Dask cluster extra is installed.",
    )
    p.set_defaults(func=run)


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _probe_session(ort):
    """(provider a one-node session runs on with CUDA first, error text or None)."""
    from ..devices import _probe_model

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(_probe_model().SerializeToString(), options,
                                       providers=[CUDA, CPU])
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return CPU, " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return session.get_providers()[0], None


def diagnose() -> tuple[str, list[str], list[tuple[str, str]]]:
    """``(provider, reasons it is not CUDA, [(item, value)] of versions and findings)``;
    provider is ``"none"`` when onnxruntime cannot be imported (the reason says why)."""
    from .. import __version__

    rows = [("preddiff", __version__), ("python", platform.python_version()),
            ("platform", platform.platform())]
    for name in ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "dask", "distributed",
                 "dask-cuda", "nvidia-cudnn-cu12", "nvidia-cudnn-cu13"):
        rows.append((name, _version(name) or "not installed"))
    try:
        import onnxruntime as ort

        from ..classifier import _cuda_device_count, preload_cuda_libraries
    except Exception as exc:  # noqa: BLE001 - ImportError, or whatever a broken build raises
        from ..cli import import_failure

        error = (import_failure(exc) if isinstance(exc, ImportError)
                 else " ".join(f"{type(exc).__name__}: {exc}".split()))
        rows.append(("onnxruntime (imported)", "FAILED"))
        return "none", [error], rows
    rows.append(("onnxruntime (imported)", f"{ort.__version__} from {ort.__file__}"))
    available = ort.get_available_providers()
    rows.append(("onnxruntime providers built in", ", ".join(available)))
    devices = _cuda_device_count()
    rows.append(("CUDA devices (driver)", str(devices)))
    rows.append(("onnxruntime.preload_dlls", preload_cuda_libraries()))
    reasons = []
    if CUDA not in available:
        reasons.append("this onnxruntime build has no CUDA provider: pip install "
                       "'preddiff[gpu]' (onnxruntime-gpu with the CUDA and cuDNN libraries)")
    if devices == 0:
        reasons.append("the NVIDIA driver (libcuda) reports no CUDA device, or is not "
                       "installed")
    provider = CPU
    if not reasons:
        provider, error = _probe_session(ort)
        if provider != CUDA:
            reasons.append("onnxruntime could not start its CUDA provider (CUDA or cuDNN "
                           "libraries missing or of another major version than onnxruntime "
                           f"{ort.__version__} was built for; pip install 'preddiff[gpu]')"
                           + (f": {error}" if error else ""))
    return provider, reasons, rows


def run(args: argparse.Namespace) -> int:
    provider, reasons, rows = diagnose()
    width = max(len(item) for item, _ in rows)
    for item, value in rows:
        print(f"{item:<{width}}  {value}")
    print()
    print(f"execution provider: {provider}")
    for reason in reasons:
        print(f"  {'not CUDA' if provider != 'none' else 'no onnxruntime'}: {reason}")
    if _version("distributed") is None:
        print("Dask cluster (--workers, --scheduler): not installed; pip install "
              "'preddiff[cluster]'")
    else:
        print("Dask cluster (--workers, --scheduler): available; one worker per GPU: "
              "dask-cuda's LocalCUDACluster, or one `dask worker` per device with "
              "CUDA_VISIBLE_DEVICES (README: Many images, many machines)")
    sys.stdout.flush()
    return 1 if provider == "none" else 0
