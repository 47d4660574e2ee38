"""Export a torchvision-layout ResNet-18 from PyTorch to ONNX, as a user would (random weights).

    python bench/torch_resnet18.py OUT.onnx      # needs PyTorch (not a preddiff dependency)

torchvision itself is not needed: the network is written out here with torchvision's layout
(7×7/2 stem, BatchNorm, 3×3/2 max pool, four stages of two basic blocks with 1×1/2 projection
shortcuts, global average pool, 1000-way linear), with the ImageNet normalisation
``(x − mean) / std`` and a softmax inside the graph, exported by ``torch.onnx.export`` with a
dynamic batch axis (the README's recipe). The weights are random (BatchNorm statistics too),
so the timings are those of the real architecture, not the classifications.
Used for the README's time per image of a user's model (``preddiff explain`` on it).
"""
import sys

import torch
from torch import nn


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


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.stages(self.stem((x - self.mean) / self.std))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return torch.softmax(self.fc(x), dim=1)


def main(out: str) -> None:
    torch.manual_seed(0)
    model = ResNet18().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_(0, 0.1)
    with torch.no_grad():
        torch.onnx.export(model, torch.rand(1, 3, 224, 224), out, input_names=["data"],
                          output_names=["prob"],
                          dynamic_axes={"data": {0: "N"}, "prob": {0: "N"}},
                          opset_version=17, dynamo=False)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "resnet18.onnx")
