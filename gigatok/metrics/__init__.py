"""Evaluation metrics: FID / IS / precision-recall on streamed images, a tokenizer's reconstruction metrics and
linear probing.

Modules, one job each (import them directly; this package imports nothing, so that using one metric never
loads the others' dependencies): ``images`` (value ranges, batching, dataset descriptions), ``features`` (the
TF-Inception feature network from the weights registry), ``accumulators`` (fixed-memory statistics of a stream),
``fid`` (the Frechet distance), ``generation`` (summaries of image streams, the cached reference, gFID / IS /
precision / recall), ``pixel`` (PSNR, SSIM), ``reconstruction`` (everything for one tokenizer on a validation
set), ``linear_probe`` (linear classifiers on frozen features).
"""
