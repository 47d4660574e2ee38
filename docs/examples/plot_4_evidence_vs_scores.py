"""
Probabilities or scores
=======================

The weight of evidence (eq. 4–5) needs probabilities: it compares the log-odds of a class with
and without a window. For a layer that is not a probability — LeNet's penultimate scores
``ip2``, a network's logits, a hidden feature map — preddiff uses the activation difference
(eq. 9) instead, in the layer's own units. The paper's Figure 2 compares the two; here for the
bundled LeNet, explaining both blobs in one run.
"""

import numpy as np

import preddiff
from preddiff import plot, samplers, zoo
from preddiff.classifier import OnnxClassifier
from preddiff.digits import load_digits

digits, labels = load_digits()
index = 7
x, pool = digits[index], np.delete(digits, index, axis=0)
clf = OnnxClassifier(zoo.ensure_onnx("lenet"), outputs=["prob", "ip2"])
sampler = samplers.ConditionalGaussianSampler.fit(pool, window=4, padding=2, rng=0)
expl = preddiff.prediction_difference(x, clf, sampler, window=4, num_samples=10, rng=0,
                                      blobs=("prob", "ip2"), probability_blobs=("prob",),
                                      progress=False)
(c, p), = expl.top_classes("prob", 1)
print(f"class {c}: p = {p:.3f}, score ip2 = {expl.clean['ip2'][c]:.2f}")

# %%
# Left: the input; then the weight of evidence of ``prob`` (bits) and the activation
# difference of the score ``ip2`` for the same class.
panels = [plot.Panel(x[0], "image", "input"),
          plot.Panel(expl.relevance_of("prob", c), "signed", f"prob, class {c} (bits)"),
          plot.Panel(expl.relevance_of("ip2", c), "signed", f"ip2, class {c} (score units)")]
fig = plot.grid(panels, ncols=3, colorbar=True)
