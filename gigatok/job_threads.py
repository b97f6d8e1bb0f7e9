"""A job keeps to the CPU threads it was given: torch's, and the native pools NumPy, SciPy and scikit-learn call.

``torch.set_num_threads`` sizes torch's pool only. OpenBLAS (NumPy's and SciPy's) and scikit-learn's OpenMP start
one thread per core of the machine whatever torch was told, so each of two local workers sharing two cores ran its
linear probes' L-BFGS on two spinning BLAS threads against the other worker's training: the tokenizer probe, whose
fit is small matrix products (900 x 128 features, 18 classes), took 11-24 s a run in ``scaling_1d_vs_2d`` and
4-6 s once limited to the job's one thread (features included; the fit alone: :func:`use_threads`).
"""

from __future__ import annotations


def use_threads(threads: int) -> None:
    """Every thread pool of this process at ``threads``: torch's intra-op pool, and through threadpoolctl each
    BLAS and OpenMP library NumPy, SciPy and scikit-learn load.

    threadpoolctl limits the libraries loaded when it is called, so SciPy's linear algebra and scikit-learn's
    linear models (the probes' L-BFGS) are imported first. A random 900 x 128 probe fit took 0.27-0.58 s on
    OpenBLAS's two threads and 0.03-0.06 s on one, alone and beside a busy core (2026-12-02, two cores)."""
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)
    import sklearn.linear_model  # noqa: F401  (loads scikit-learn's OpenMP)
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    torch.set_num_threads(threads)
