"""The house look of every figure, in one place: seaborn's ``whitegrid`` style at ``paper`` scale, colours from
matplotlib's ``tab10`` cycle (the ``C0``, ``C1``, ... every figure names its series by, so 1D is one colour
everywhere).

``with house_theme(): ...`` draws in it without changing matplotlib's global settings for the caller.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import matplotlib as mpl
import seaborn as sns
from cycler import cycler

PALETTE = "tab10"


def house_rc() -> dict[str, Any]:
    """The rc settings of the house theme."""
    rc: dict[str, Any] = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.1)}
    rc["axes.prop_cycle"] = cycler(color=sns.color_palette(PALETTE))
    rc["grid.alpha"] = 0.6
    return rc


def house_theme() -> AbstractContextManager[Any]:
    """A context in which figures are drawn in the house theme."""
    return mpl.rc_context(house_rc())
