"""regionvlm: region-level vision-language models (RegionGPT and friends) as swappable, YAML-assembled plugins.

Importing this package is cheap: no torch, lightning or transformers until a component is built.
"""

__version__ = "0.1.0"

__all__ = ["RegionChat", "__version__"]


def __getattr__(name: str):
    # lazy: `from regionvlm import RegionChat` imports torch, `import regionvlm` does not
    if name == "RegionChat":
        from regionvlm.inference import RegionChat

        return RegionChat
    raise AttributeError(f"module 'regionvlm' has no attribute {name!r}")
