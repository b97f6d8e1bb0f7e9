"""Analysis of tracked runs: load them from MLflow into one table, then draw the paper's figures from it.

``analysis.load`` reads the store (one query per study), ``analysis.figures`` turns the table into figures and
returns exactly what it drew, ``analysis/plot_scaling.py`` is the command line that writes them to disk.
"""
