"""Inference at the speed of the hardware, without disturbing the host process.

- :mod:`~precipdiff.perf.allocator`: a caching CPU allocator for torch's tensors
  (the host's ``malloc`` is never reconfigured);
- :mod:`~precipdiff.perf.fpenv`: the floating-point environment (flushing denormals
  inside a scope, restoring the caller's environment exactly);
- :mod:`~precipdiff.perf.precision`: ``float32`` / ``bf16`` / ``fp16`` inference
  copies of a network;
- :mod:`~precipdiff.perf.process`: the process set-up the embedded server applies at
  start-up (threads, allocator, denormals, autograd off), each part reported.
"""
