"""The local cluster and where it runs: the embedded server, workers in the kernel, worker
processes, the app in use, connecting elsewhere, and ``celerynb up``.

Kernel side only: worker processes import :mod:`celerynb.workers`, never this package's
lifecycle code. Import submodules directly; this package's public names are re-exported by
:mod:`celerynb`.
"""
