"""lmbench: throughput, memory and energy of language-model training, measured honestly.

The surface to script against, importable from here:

    lmbench.Config          one training configuration (frozen, validated; lmbench.plan.config)
    lmbench.load_results    run directories -> (DataFrame, records, warnings) (lmbench.analyze.frame.load)
    lmbench.compare         baseline vs candidate records -> verdicts (lmbench.analyze.compare.compare)

Everything else lives in the stage subpackages (docs/architecture.md) and may move.
"""

from typing import Any

__version__ = "0.1.0"

#: Version of the record layout in ``results.jsonl``; bump on incompatible changes.
SCHEMA_VERSION = 1

#: Re-exported names -> (module, attribute), imported on first use so `import lmbench` stays light.
_PUBLIC = {"Config": ("lmbench.plan.config", "Config"), "load_results": ("lmbench.analyze.frame", "load"),
           "compare": ("lmbench.analyze.compare", "compare")}
__all__ = ["SCHEMA_VERSION", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lmbench' has no attribute {name!r}")
    import importlib

    module, attribute = _PUBLIC[name]
    return getattr(importlib.import_module(module), attribute)
