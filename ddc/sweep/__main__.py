"""``python -m ddc.sweep SPEC ...``: the same as ``ddc sweep SPEC ...``."""

from ..cli import sweep

if __name__ == "__main__":  # pragma: no cover
    sweep()
