"""``preddiff doctor``: the execution provider that will run, versions, why not CUDA."""
import pytest

from preddiff.cli import main
from preddiff.commands import doctor


def test_doctor_names_the_provider_and_versions(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime (imported)" in out and "numpy" in out
    provider = next(line for line in out.splitlines() if line.startswith("execution provider:"))
    assert provider.split(": ")[1] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    if provider.endswith("CPUExecutionProvider"):
        assert "not CUDA: " in out  # a CPU run always says why


def test_doctor_says_to_install_the_gpu_extra_without_a_cuda_build(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    provider, reasons, _ = doctor.diagnose()
    assert provider == "CPUExecutionProvider"
    assert any("no CUDA provider" in r and "preddiff[gpu]" in r for r in reasons)


def test_doctor_reports_a_cuda_provider_that_fails_to_start(monkeypatch):
    import onnxruntime

    from preddiff import classifier

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(classifier, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(classifier, "_PRELOAD_NOTE", "done")
    monkeypatch.setattr(doctor, "_probe_session",
                        lambda ort: ("CPUExecutionProvider", "libcudnn.so.9: not found"))
    provider, reasons, _ = doctor.diagnose()
    assert provider == "CPUExecutionProvider"
    assert len(reasons) == 1 and "libcudnn.so.9: not found" in reasons[0]


@pytest.mark.parametrize("printed, note", [("", "done"),
                                           ("Failed to load libcublas.so.13: missing\n",
                                            "incomplete: Failed to load libcublas.so.13")])
def test_preload_reports_missing_libraries(monkeypatch, printed, note):
    import onnxruntime

    from preddiff import classifier

    monkeypatch.setattr(classifier, "_PRELOAD_NOTE", None)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(classifier, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: print(printed, end=""),
                        raising=False)
    assert classifier.preload_cuda_libraries().startswith(note)
