"""Training and evaluating models (imported only by ``geoseg train`` and ``geoseg evaluate``).

A run's path: config -> labelled images -> crops -> the Lightning task -> checkpoints -> export.

- :mod:`~geoseg.training.config`, :mod:`~geoseg.training.config_sections`: validated training
  configs (``configs/train_*.yaml``): the legend, then the ``data``, ``model`` and ``training``
  sections.
- :mod:`~geoseg.training.data`: labelled images loaded into memory (folder pairs, raster scenes),
  split by group, band and class statistics.
- :mod:`~geoseg.training.label_encoding`: how mask values (colours, ids, vectors) become class ids.
- :mod:`~geoseg.training.label_sets`: set-valued labels (a source class that is several classes).
- :mod:`~geoseg.training.augment`: crop augmentation (zoom, flips, colour jitter, hue shift).
- :mod:`~geoseg.training.datasets`: the torch datasets (random crops; whole images for validation).
- :mod:`~geoseg.training.losses`: the set-valued cross-entropy.
- :mod:`~geoseg.training.pretrained`: ImageNet weights for EfficientNet-Lite, without a download.
- :mod:`~geoseg.training.prepare`: a run's data: normalised, class-weighted; its loaders.
- :mod:`~geoseg.training.task`: the Lightning task (torchgeo's segmentation task, any smp network).
- :mod:`~geoseg.training.schedule`: the learning-rate schedule, and its state on resume.
- :mod:`~geoseg.training.trainer`: the Lightning Trainer: checkpoints, early stopping, progress.
- :mod:`~geoseg.training.checkpoints`: resuming, starting weights, the best checkpoint.
- :mod:`~geoseg.training.train`: a training run (:func:`train`), step by step.
- :mod:`~geoseg.training.export`: the trained network to a geoseg checkpoint with its card.
- :mod:`~geoseg.training.metrics`: confusion matrices, IoU, Dice, pixel accuracy.
- :mod:`~geoseg.training.evaluate`: scoring a model on labelled images through
  :func:`geoseg.segment`; :mod:`~geoseg.training.scores` and :mod:`~geoseg.training.plots`
  report it.
"""
