"""braintumor: brain-MRI tumor detection and segmentation with Mask R-CNN (ResNet-101 + FPN).

Stages live in their own modules: :mod:`braintumor.config` (settings and presets),
:mod:`braintumor.data` (VIA / COCO annotations to instance masks),
:mod:`braintumor.mrcnn` (the model), :mod:`braintumor.train`, :mod:`braintumor.evaluate`,
:mod:`braintumor.detect` and :mod:`braintumor.ui` (the decision-support app).
"""

__version__ = "0.1.0"
