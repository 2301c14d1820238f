"""profilingdit: the project's library code that is not caching.

Sequence-parallel runtime (:mod:`profilingdit.parallel`), file and signal helpers (:mod:`profilingdit.files`),
generation timing (:mod:`profilingdit.timing`), the one way to change a model from the outside (:mod:`profilingdit.seams`), video metrics (:mod:`profilingdit.metrics`), the benchmark harness
(:mod:`profilingdit.bench`) and the profiling command lines' shared code (:mod:`profilingdit.profiling_cli`). The cache
engine is :mod:`common_cache`; the models are :mod:`wan` and :mod:`hyvideo`.
"""
