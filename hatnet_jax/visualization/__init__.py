"""Pictures from arrays, used by the tasks (TensorBoard panels) and the tools: `images` (pixels from
normalised images, class colours, segmentation panels, heat-map overlays) and `attention` (H-MHSA's attention
maps and their overlays). Imports `models` and numpy; nothing above it (tasks, training, tools).
"""
