"""Whole studies on real data, each one command and one resumable output directory.

- ``keskar``: ``lbtkit study keskar``: Keskar et al.'s study of one SB/LB pair, end to end
  (train both from one initialisation, interpolate, sharpness, report.md);
- ``fashion``: ``lbtkit study fashion`` (``make study``): Keskar's F1 protocol over seeds and
  the batch-size sweep with the gradient noise scale, on Fashion-MNIST;
- ``summary``: the numbers a study reports, from its runs' files (pure: no training);
- ``figures``: the figures made from several runs (the interpolation band over seeds);
- ``budget``: the time a study should take, from measured per-epoch costs;
- ``demo``: ``lbtkit demo`` (``make demo``): both studies in minutes on the bundled digits;
- ``verdicts``, ``fashion_verdicts``: every verdict a page states, as data, with the threshold
  that decides it (pure functions);
- ``demo_report``, ``keskar_report``, ``fashion_report``: the pages, rendered from the Jinja2
  templates in ``lbtkit/templates`` (``common``: what they share: LABELS, links; the formats
  and the template environment are ``lbtkit.markdown``'s, shared with the sweep report);
- ``fashion_presets``: the Fashion-MNIST study's FULL and QUICK specs.
"""
