"""The synthetic data engine: images from label maps, failures with exact truth.

Modules (import what you need; nothing is imported here, to keep ``import bids_qc`` light):

* :mod:`~bids_qc.synth.labelmaps` real anatomies and the train/eval guard;
* :mod:`~bids_qc.synth.contrast`, :mod:`~bids_qc.synth.deform`,
  :mod:`~bids_qc.synth.synthesize` SynthSeg-style images and their true labels;
* :mod:`~bids_qc.synth.misregistration` affines drawn to a RegQCNET RMSE;
* :mod:`~bids_qc.synth.damage` (with :mod:`~bids_qc.synth.weak_segmenter`) segmentation
  damage families, :mod:`~bids_qc.synth.shape_damage` shape failures;
* :mod:`~bids_qc.synth.metrics` Dice and RMSE; :mod:`~bids_qc.synth.register` affine
  registration; :mod:`~bids_qc.synth.template` and :mod:`~bids_qc.synth.fit_affines`
  template space; :mod:`~bids_qc.synth.phantom` a small analytic head for tests.
"""
