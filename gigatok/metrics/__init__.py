"""Evaluation metrics: FID / IS / precision-recall on streamed images, and the reconstruction metrics."""
