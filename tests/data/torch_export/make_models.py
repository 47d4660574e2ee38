"""Export the small PyTorch models in this folder to ONNX, as a user would (issue 9).

Run with PyTorch (not a preddiff dependency; 2.13.0 CPU was used, with onnxscript):

    python tests/data/torch_export/make_models.py

The models are random-weight miniatures of what users export from torchvision and timm, so
that the tests see the graphs torch really writes (the input normalisation as Sub/Div nodes,
residual Add, Clip for ReLU6, depthwise convolutions, ``nn.ZeroPad2d``, shape computations
for ``flatten``, a final Softmax), not hand-written ones:

- ``mini_resnet.onnx``: ``(x − mean) / std`` → 3×3/2 stem conv + BN + ReLU → 3×3/2 max pool →
  two basic residual blocks (the second with a 1×1/2 projection shortcut) → global average
  pool → flatten → linear → softmax; input 3×64×64, 10 classes.
- ``mini_mobilenet.onnx``: ``(x − mean) / std`` → ``ZeroPad2d((0, 1, 0, 1))`` + 3×3/2 conv
  (EfficientNet's "same" padding) + BN + ReLU6 → inverted residual (1×1 expand, 3×3
  depthwise, 1×1 project, residual Add) → GELU → 1×1 conv + SiLU → global average pool →
  linear → softmax; input 3×64×64, 10 classes.

``torch_outputs.npz`` holds torch's own ``prob`` of each model for two fixed inputs
(``input``, uniform [0, 1) from ``numpy.random.default_rng(0)``).

Both are exported in eval mode with a dynamic batch axis, input ``data``, output ``prob``, by
the TorchScript exporter (``dynamo=False``) at opset 17, where GELU is written as its Erf
chain (Div, Erf, Add, Mul, Mul).
"""
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
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


def randomise_batch_norm(model, generator):
    """Non-trivial running statistics, so that the folded BatchNorm is not an identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def export(model, name):
    path = HERE / name
    torch.onnx.export(model.eval(), torch.rand(1, 3, 64, 64), str(path), input_names=["data"],
                      output_names=["prob"], dynamic_axes={"data": {0: "N"}, "prob": {0: "N"}},
                      opset_version=17, dynamo=False)
    print("wrote", path, path.stat().st_size, "bytes")


def main():
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
    np.savez(HERE / "torch_outputs.npz", **outputs)
    print("wrote", HERE / "torch_outputs.npz", f"(torch {torch.__version__})")


if __name__ == "__main__":
    main()
