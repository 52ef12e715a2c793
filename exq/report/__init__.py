"""`exq report`: a timeline of the GPUs (HTML with inline SVG, or text), per-phase stats and utilisation."""
