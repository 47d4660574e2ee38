"""
Marginal or conditional sampling
================================

How a removed window is filled in decides what the explanation says (paper §3.1). The
*marginal* sampler copies the same window out of other images; the *conditional* sampler
draws it from a Gaussian conditioned on the pixels around it, so the samples continue the
strokes of the digit. The paper argues that conditional samples, being closer to the image,
give a more faithful picture of what the classifier relies on. Here both explain the same
decision of the bundled LeNet (in bits of weight of evidence).
"""

import matplotlib.pyplot as plt
import numpy as np

import preddiff
from preddiff import plot, samplers, zoo
from preddiff.classifier import OnnxClassifier
from preddiff.digits import load_digits

digits, labels = load_digits()
index = 3
x, pool = digits[index], np.delete(digits, index, axis=0)
clf = OnnxClassifier(zoo.ensure_onnx("lenet"), outputs=["prob"])

found = {
    "marginal": samplers.MarginalSampler(pool),
    "conditional": samplers.ConditionalGaussianSampler.fit(pool, window=4, padding=2, rng=0),
}
maps = {}
for name, sampler in found.items():
    expl = preddiff.prediction_difference(x, clf, sampler, window=4, num_samples=10, rng=0,
                                          progress=False)
    (c, p), = expl.top_classes("prob", 1)
    maps[name] = expl.relevance_of("prob", c)
print(f"digit {index}: LeNet says {c} (p = {p:.3f})")

# %%
# Each map on its own colour scale. The scales differ by more than an order of magnitude: a window
# copied from another digit removes far more evidence than one drawn to continue the strokes
# around it. ``plot.show_signed(..., vmax=...)`` puts several maps on one scale.
for name, relevance in maps.items():
    print(f"{name}: largest |relevance| {np.abs(relevance).max():.3f} bits")
fig, axes = plt.subplots(1, 3, figsize=(8, 2.8), layout="constrained")
axes[0].imshow(x[0], cmap="gray")
axes[0].set_title("input")
axes[0].set_axis_off()
for ax, (name, relevance) in zip(axes[1:], maps.items()):
    plot.show_signed(ax, relevance, colorbar=True, title=f"{name} (bits)")
