"""Datasets: the ImageNet-style image folder and the built-in offline photo dataset."""
