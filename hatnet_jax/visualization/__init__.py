"""Pictures from arrays, used by the tasks (TensorBoard panels) and the tools: `images` (pixels from
normalised images, class colours, segmentation panels, heat-map overlays), `attention` (H-MHSA's attention
maps and their overlays) and `boxes` (class-coloured boxes with name/score tags, ground truth | prediction
panels for detection). Imports numpy, JAX, Pillow and, of hatnet_jax, `structures` only; nothing above it (tasks,
training, tools).
"""
