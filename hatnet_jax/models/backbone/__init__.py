"""The HAT-Net backbone: the network (`hatnet.HATNet`: stem, four stages of inverted residuals + H-MHSA, the
classifier head, and `features` for the stage maps), H-MHSA itself (`attention`) and the variant table
(`variants`: tiny/small/medium/large as rows, not copies of code). Imports `models.layers` and
`models.kernels` only.
"""
