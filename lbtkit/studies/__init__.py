"""Whole studies on real data, each one command and one resumable output directory.

- ``keskar``: ``lbtkit study keskar``: Keskar et al.'s study of one SB/LB pair, end to end
  (train both from one initialisation, interpolate, sharpness, report.md);
- ``fashion``: ``lbtkit study fashion`` (``make study``): Keskar's F1 protocol over seeds and
  the batch-size sweep with the gradient noise scale, on Fashion-MNIST;
- ``summary``: the numbers a study reports, from its runs' files (pure: no training);
- ``figures``: the figures made from several runs (the interpolation band over seeds);
- ``budget``: the time a study should take, from measured per-epoch costs;
- ``fashion_index``: the study's index.md from its numbers.
"""
