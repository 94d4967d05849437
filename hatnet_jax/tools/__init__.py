"""Command lines for people (each `python -m hatnet_jax.tools.NAME` and a `hatnet-*` console script):
`predict`, `attention_maps`, `export`, `convert` (official .pth / mmseg checkpoints), `prepare_data`
(TFDS preparation), with `inference` holding what they share (finding and loading weights, preprocessing).
The top of the import order: may import every other folder; nothing imports it.
"""
