"""Native CPU kernels (C++ through XLA's FFI) that the layers take on one CPU device in float32: the fused
SiLU -> depthwise -> SiLU, H-MHSA's softmax attention, and GroupNorm. `native` builds the *.cc sources on
first use and caches the libraries; each `fused_*` module wraps one kernel with its VJP and says when it is
usable. Imports nothing from hatnet_jax outside this folder.
"""
