"""Mask R-CNN (He et al. 2017) in Keras 3, one module per stage.

``from braintumor.mrcnn import MaskRCNN`` — see :mod:`braintumor.mrcnn.model`.
TensorFlow is imported on first use of this package.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info and warning logs (before its import)

from braintumor.mrcnn.model import MaskRCNN  # noqa: E402

__all__ = ["MaskRCNN"]
