"""regionvlm: region-level vision-language models (RegionGPT and friends) as swappable, YAML-assembled plugins.

Importing this package is cheap: no torch, lightning or transformers until a component is built.
"""

__version__ = "0.1.0"
