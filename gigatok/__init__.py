"""GigaTok workbench: the hybrid CNN-Transformer VQ tokenizer, its training objective, and the paper's metrics."""

__version__ = "0.1.0"
