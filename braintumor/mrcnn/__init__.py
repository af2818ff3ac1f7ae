"""Mask R-CNN (He et al. 2017) in Keras 3, one module per stage.

``from braintumor.mrcnn import MaskRCNN`` — see :mod:`braintumor.mrcnn.model`.
TensorFlow is imported on first use of this package.
"""

from braintumor.mrcnn.model import MaskRCNN

__all__ = ["MaskRCNN"]
