"""Conversion of the authors' released checkpoints (SilentView/GigaTok) into workbench weights.

``tokenizer`` maps their VQ tokenizers (``VQVitModelPlus`` 1D, ``VQVitModel2DPlus`` 2D), ``ar`` their GPT
probes and system-level models. Each infers the architecture from the state dict's shapes, so reduced-width
stand-ins convert the same way as the released files.
"""


class ConversionError(ValueError):
    """A file that is not an authors' checkpoint of the expected kind; the message is one line naming it."""
