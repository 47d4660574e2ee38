"""
The building blocks
===================

Prediction difference analysis of the bundled, Caffe-trained LeNet on a real handwritten
digit, with the building blocks of the Python API: the classifier, the conditional sampler
fitted on the other digits, and
:func:`preddiff.prediction_difference <preddiff.analysis.prediction_difference>` (Algorithm 1 of
Zintgraf et al. 2017). Red is evidence for a class, blue evidence against; the unit is the
bit (the weight of evidence, eq. 4–5).
"""

import numpy as np

import preddiff
from preddiff import plot, samplers, zoo
from preddiff.classifier import OnnxClassifier
from preddiff.digits import load_digits

digits, labels = load_digits()            # (1797, 1, 28, 28) float32 in [0, 1]
index = 7
x = digits[index]
clf = OnnxClassifier(zoo.ensure_onnx("lenet"), outputs=["prob"])

# %%
# The conditional sampler: a Gaussian over each 8×8 patch (window k = 4 and a frame of
# l = 2 pixels), fitted on the other digits, so the explained one is never in its pool.
pool = np.delete(digits, index, axis=0)
sampler = samplers.ConditionalGaussianSampler.fit(pool, window=4, padding=2, rng=0)
expl = preddiff.prediction_difference(x, clf, sampler, window=4, num_samples=10, rng=0,
                                      progress=False)
top = expl.top_classes("prob", 3)
print("top classes:", top)

# %%
# The figure ``preddiff explain`` draws: the input, then for each class its map and the
# map's overlay on the digit.
maps = {f"digit {c}": expl.relevance_of("prob", c) for c, p in top}
probs = {f"digit {c}": p for c, p in top}
fig = plot.explanation_figure(x[0], maps, probs)
