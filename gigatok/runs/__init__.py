"""Runs: a planned run is a chain of stages, each stored on disk under its own config hash.

- :mod:`~gigatok.runs.spec`: what a run is (:class:`RunSpec`, :class:`RunContext`), the stage names and the final
  metrics each stage reports; the run's hash. No torch.
- :mod:`~gigatok.runs.layout`: the folders of a run's tokenizer and AR model, result files (read, write, lock) and
  the validation subsets the metrics score.
- :mod:`~gigatok.runs.context`: what a stage is (:class:`Stage`), what its function gets (:class:`StageContext`,
  with the per-process :class:`Workspace` of networks) and returns (:class:`StageOutcome`).
- :mod:`~gigatok.runs.train_stages`, :mod:`~gigatok.runs.eval_stages`, :mod:`~gigatok.runs.generation_stage`: the
  stages' functions and result paths (the CFG search's stage is :mod:`gigatok.cfg_search.stage`).
- :mod:`~gigatok.runs.stages`: the registry, name -> :class:`Stage`; result paths, completed stages, running one.
- :mod:`~gigatok.runs.execute`: :func:`execute_run`, the stages in order, tracked in MLflow.

Each module imports only those above it in this list (and :mod:`gigatok.cfg_search`, which sits between the stage
modules and the registry); this file imports nothing, so importing :mod:`gigatok.runs.spec` stays light.
"""
