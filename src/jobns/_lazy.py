"""`lazy("re")`: a stand-in for a module that is imported on first attribute access.

The job-start path (a cached config, create, delete) must not pay for modules that only
validation, help output or rare paths use; `re` (with enum) is the largest of them.
"""

from __future__ import annotations


class lazy:
    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module = None

    def __getattr__(self, attr):
        if self._module is None:
            __import__(self._name)
            import sys
            self._module = sys.modules[self._name]
        return getattr(self._module, attr)
