"""
One call: ``preddiff.explain``
==============================

:func:`preddiff.explain <preddiff.explainer.explain>` does in Python what ``preddiff explain`` does on the command line,
with the same defaults, preprocessing, pool, labels and incremental decision; the command
line's options are its keyword arguments (``window=4``, ``stride=2``, ``samples=20``,
``sampler="marginal"``, ``labels="imagenet"``, …). The image can be a file, a bundled digit
(``"digits:7"``), an array or a PIL image; the model a zoo name, an ONNX file or an
``onnx.ModelProto``::

    e = preddiff.explain("cat.jpg", "effnet.onnx", labels="imagenet", target="tiger cat")

Here the bundled LeNet explains a handwritten digit, offline.
"""

import preddiff

e = preddiff.explain("digits:7", progress=False)
print(e.top_classes())          # class names (here the digits) and probabilities

# %%
# The figure the command line draws: the input, the weight of evidence of each class in bits
# (red for, blue against the class) and its overlay on the image.
fig = e.plot()

# %%
# ``target`` limits the maps computed to the classes named (indices, or names when labels are
# known). Why is this 7 not a 1? One colour scale for both maps makes them comparable.
e = preddiff.explain("digits:7", target=["7", "1"], progress=False)
fig = e.plot(shared_scale=True)

# %%
# ``save`` keeps what the command line keeps, compressed; ``Explanation.load`` reads it back.
# ``e.relevance["prob"]`` holds the maps, one per class in ``e.units["prob"]``.
print(e.units["prob"], e.relevance["prob"].shape)
