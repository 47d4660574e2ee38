"""The device path on a real CUDA device (run by ``bench/gpu_check.sh`` on a lent GPU; skipped
where onnxruntime has no working CUDA provider). On the CPU the same code runs through
``tests/test_compose.py``'s simulated CUDA path.
"""
import numpy as np
import pytest

from preddiff import prediction_difference
from preddiff.classifier import OnnxClassifier
from preddiff.samplers import MarginalSampler


def _cuda_works() -> bool:
    try:
        from preddiff.classifier import _cuda_device_count
        import onnxruntime as ort

        return ("CUDAExecutionProvider" in ort.get_available_providers()
                and _cuda_device_count() > 0)
    except Exception:  # noqa: BLE001
        return False


pytestmark = pytest.mark.skipif(not _cuda_works(), reason="no CUDA device for onnxruntime")

#: Relative deviation two valid float32 evaluations may show (bench/float32_floor.py measured
#: 2.4e-5 to 4.8e-5 on the netzoo networks), with margin.
FLOAT32_FLOOR = 2e-4


def _net(rng):
    from test_compose import conv_net  # tests/ is on sys.path under pytest

    return conv_net(rng, size=32, classes=10)


def test_cuda_composes_on_the_device_and_matches_the_cpu(rng):
    model = _net(rng)
    x = rng.normal(size=(3, 32, 32)).astype(np.float32)
    sampler = MarginalSampler(rng.normal(size=(12, 3, 32, 32)).astype(np.float32))
    kwargs = dict(window=5, stride=3, num_samples=4, rng=0, progress=False,
                  blobs=("conv", "prob"), probability_blobs=("prob",), batch_size=400)
    cuda = OnnxClassifier(model, outputs=["conv", "prob"], device="cuda", batch_size=128)
    assert cuda.provider == "CUDAExecutionProvider" and cuda.composes_on_device
    got = prediction_difference(x, cuda, sampler, **kwargs)
    assert cuda._composer.runner.device_type == "cuda"
    want = prediction_difference(x, OnnxClassifier(model, outputs=["conv", "prob"],
                                                   device="cpu", batch_size=128),
                                 sampler, **kwargs)
    for blob in ("prob", "conv"):
        a, b = got.relevance[blob], want.relevance[blob]
        assert np.abs(a - b).max() <= FLOAT32_FLOOR * np.abs(b).max()


def test_cuda_batch_sizes_agree(rng):
    model = _net(rng)
    x = rng.normal(size=(3, 32, 32)).astype(np.float32)
    sampler = MarginalSampler(rng.normal(size=(12, 3, 32, 32)).astype(np.float32))
    maps = [prediction_difference(x, OnnxClassifier(model, device="cuda", batch_size=b),
                                  sampler, window=4, stride=2, num_samples=4, rng=1,
                                  batch_size=max(b, 256), progress=False).relevance["prob"]
            for b in (16, 256)]
    assert np.abs(maps[0] - maps[1]).max() <= FLOAT32_FLOOR * np.abs(maps[1]).max()
