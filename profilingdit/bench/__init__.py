"""The benchmarks' library code: the runner of prompts x seeds x cache modes (:mod:`profilingdit.bench.runner`),
the diffusers peer caches (:mod:`profilingdit.bench.peers`) and the random-model harnesses of the loop benchmarks
(:mod:`profilingdit.bench.wan_harness`, :mod:`profilingdit.bench.hunyuan_harness`). Their command lines are in
``scripts/bench/``."""
