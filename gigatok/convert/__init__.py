"""Conversion of the authors' released checkpoints (SilentView/GigaTok) into workbench weights.

``tokenizer`` maps their VQ tokenizers (``VQVitModelPlus`` 1D, ``VQVitModel2DPlus`` 2D), ``ar`` their GPT
probes and system-level models. Each infers the architecture from the state dict's shapes, so reduced-width
stand-ins convert the same way as the released files. ``released`` turns a converted model into the run folder a
trained one would have (used by ``python -m gigatok.convert`` and the ``released_checkpoints`` study).
"""


class ConversionError(ValueError):
    """A file that is not an authors' checkpoint of the expected kind; the message is one line naming it."""
