"""Scoring grounding methods on MCC and the standard single-concept benchmarks.

- ``benchmark.metrics``: the MCC metrics (``fg_scores``) and the standard protocol
  (``binary_scores``), numpy only.
- ``benchmark.datasets``: MCC (``datasets.load_dataset``), ImageNet-Segmentation
  (``gtsegs_ijcv.mat``) and PascalVOC 2012 single-class loaders, one ``Sample`` type.
- ``benchmark.evaluate``: ``evaluate(method, dataset, out_dir=...)``, resumable, with reports.
- ``benchmark.report`` / ``benchmark.figures``: JSON + Markdown reports and PNG figures.
- ``benchmark.sweep``: layer / layer-pair / propagation-step sweeps of AnchorDiff.
- ``python -m benchmark.bench``: throughput of the metrics on one CPU core.

Nothing is imported here, so ``benchmark.bench`` can pin BLAS threads before numpy loads.
"""
