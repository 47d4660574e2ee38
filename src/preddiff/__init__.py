"""preddiff: Prediction Difference Analysis, a fast and faithful reference implementation.

Zintgraf, Cohen, Adel & Welling, "Visualizing Deep Neural Network Decisions: Prediction
Difference Analysis" (ICLR 2017; arXiv 2016 "A New Method to Visualize Deep Neural Networks").
"""
__version__ = "0.1.0"

from .errors import PredDiffError, InvalidArgument  # noqa: E402,F401
from .analysis import prediction_difference, Explanation  # noqa: E402,F401
from . import samplers  # noqa: E402,F401
from .sensitivity import sensitivity_map  # noqa: E402,F401
from .explainer import explain  # noqa: E402,F401
