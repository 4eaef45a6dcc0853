"""lmbench: throughput, memory and energy of language-model training, measured honestly."""

__version__ = "0.1.0"

#: Version of the record layout in ``results.jsonl``; bump on incompatible changes.
SCHEMA_VERSION = 1
