"""Training and evaluating models (imported only by ``geoseg train`` and ``geoseg evaluate``).

- :mod:`~geoseg.training.config`: validated training configs (``configs/train_*.yaml``).
- :mod:`~geoseg.training.data`: labelled image sources, crops and augmentation.
- :mod:`~geoseg.training.label_sets`: set-valued labels (a source class that is several classes).
- :mod:`~geoseg.training.losses`: the set-valued cross-entropy.
- :mod:`~geoseg.training.pretrained`: ImageNet weights for EfficientNet-Lite, without a download.
- :mod:`~geoseg.training.metrics`: confusion matrices, IoU, Dice, pixel accuracy.
- :mod:`~geoseg.training.train`: a training run (:func:`train`), resumable from its checkpoints.
- :mod:`~geoseg.training.export`: the trained network to a geoseg checkpoint with its card.
- :mod:`~geoseg.training.evaluate`: scoring a model on labelled images through
:func:`geoseg.segment`.
"""
