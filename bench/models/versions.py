"""Release numbers of installed libraries, for the features that depend on them."""

from __future__ import annotations


def release(version: str | None) -> tuple[int, ...]:
    """(major, minor) of a version string such as 2.11.0+cu130 or 0.18.0; () when it cannot be read."""
    parts = (version or "").split("+")[0].split(".")[:2]
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else ()


def versions() -> str:
    """The library versions a kernel swap depends on, for its error messages: `transformers 5.17.0, torch ...`."""
    import importlib.metadata

    found = []
    for name in ("transformers", "torch", "triton", "liger-kernel", "apex"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)
