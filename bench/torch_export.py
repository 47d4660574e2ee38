"""Networks exported from PyTorch to ONNX as a user would (random weights; issue 9).

    python bench/torch_export.py fixtures         # tests/data/torch_export/*.onnx + outputs
    python bench/torch_export.py resnet18 OUT.onnx

Needs PyTorch (not a preddiff dependency; 2.13.0 CPU and onnxscript were used). torchvision is
not needed: the networks are written out here in torchvision's layout, exported by
``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, opset 17 — where GELU is
its Erf chain) with a dynamic batch axis, input ``data`` and output ``prob``, so that tests
and benchmarks see the graphs torch really writes: the input normalisation as Sub/Div nodes,
residual Add, Clip for ReLU6, depthwise convolutions, ``nn.ZeroPad2d`` with its pads computed
by a ConstantOfShape/Concat/Reshape chain, shape computations, a final Softmax.

``fixtures`` (committed in tests/data/torch_export/):

- ``mini_resnet.onnx``: ``(x − mean) / std`` → 3×3/2 stem conv + BN + ReLU → 3×3/2 max pool →
  two basic residual blocks (the second with a 1×1/2 projection shortcut) → global average
  pool → flatten → linear → softmax; input 3×64×64, 10 classes.
- ``mini_mobilenet.onnx``: ``(x − mean) / std`` → ``ZeroPad2d((0, 1, 0, 1))`` + 3×3/2 conv
  (EfficientNet's "same" padding) + BN + ReLU6 → inverted residual (1×1 expand, 3×3
  depthwise, 1×1 project, residual Add) → GELU → 1×1 conv + SiLU → global average pool →
  linear → softmax; input 3×64×64, 10 classes.
- ``torch_outputs.npz``: torch's own ``prob`` of each model for two fixed inputs (``input``,
  uniform [0, 1) from ``numpy.random.default_rng(0)``).

``resnet18``: torchvision's ResNet-18 layout (7×7/2 stem, BN, 3×3/2 max pool, four stages of
two basic blocks with 1×1/2 projection shortcuts, global average pool, 1000-way linear) with
the ImageNet normalisation and a softmax inside, 224×224 — about 47 MB, not committed; used for
the README's time per image of a user's model. Random weights (BatchNorm statistics too): the
timings are the real architecture's, not the classifications.
"""
import sys
from pathlib import Path

import torch
from torch import nn

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "torch_export"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class MiniResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(Basic(8, 8, 1), Basic(8, 16, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.blocks(self.stem((x - MEAN) / STD))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return torch.softmax(self.fc(x), dim=1)


class MiniMobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, 2, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24),
                                    nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False),
                                       nn.BatchNorm2d(24), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem((x - MEAN) / STD)
        x = x + self.project(self.depthwise(self.expand(x)))
        x = nn.functional.silu(self.head(nn.functional.gelu(x)))
        x = x.mean(dim=(2, 3))
        return torch.softmax(self.fc(x), dim=1)


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.stages(self.stem((x - MEAN) / STD))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return torch.softmax(self.fc(x), dim=1)


def randomise_batch_norm(model, generator):
    """Non-trivial running statistics, so that the folded BatchNorm is not an identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def export(model, name):
    path = FIXTURES / name
    torch.onnx.export(model.eval(), torch.rand(1, 3, 64, 64), str(path), input_names=["data"],
                      output_names=["prob"], dynamic_axes={"data": {0: "N"}, "prob": {0: "N"}},
                      opset_version=17, dynamo=False)
    print("wrote", path, path.stat().st_size, "bytes")


def fixtures() -> None:
    """The test fixtures in tests/data/torch_export/."""
    import numpy as np

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    # torch's own outputs on two fixed inputs: what onnxruntime must reproduce
    inputs = np.random.default_rng(0).random((2, 3, 64, 64)).astype(np.float32)
    outputs = {"input": inputs}
    for cls, name in ((MiniResNet, "mini_resnet.onnx"), (MiniMobileNet, "mini_mobilenet.onnx")):
        model = cls()
        randomise_batch_norm(model, generator)
        with torch.no_grad():
            export(model, name)
            outputs[name.removesuffix(".onnx")] = model.eval()(torch.from_numpy(inputs)).numpy()
    np.savez(FIXTURES / "torch_outputs.npz", **outputs)
    print("wrote", FIXTURES / "torch_outputs.npz", f"(torch {torch.__version__})")


def export_resnet18(out: str) -> None:
    """torchvision's ResNet-18 layout at 224×224 to ``out``."""
    torch.manual_seed(0)
    model = ResNet18().eval()
    randomise_batch_norm(model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.onnx.export(model, torch.rand(1, 3, 224, 224), out, input_names=["data"],
                          output_names=["prob"],
                          dynamic_axes={"data": {0: "N"}, "prob": {0: "N"}},
                          opset_version=17, dynamo=False)
    print("wrote", out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["fixtures"]:
        fixtures()
    elif sys.argv[1:2] == ["resnet18"] and len(sys.argv) == 3:
        export_resnet18(sys.argv[2])
    else:
        sys.exit("usage: python bench/torch_export.py fixtures | resnet18 OUT.onnx")
