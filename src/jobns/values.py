"""`Frozen`: immutable value classes declared like dataclasses, without importing
dataclasses (which pulls in inspect, ast and dis: the largest import on the job-start path).

    class Point(Frozen):
        x: int
        y: int = 0
        tags: tuple = ()

    Point(1), Point(x=1, y=2); equality, hashing and repr by field; assignment raises.
    Fields named in `_nocompare` are left out of equality and hashing.
"""

from __future__ import annotations

_MISSING = object()


class Frozen:
    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _defaults: dict = {}
    _nocompare: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fields = list(cls._fields)
        defaults = dict(cls._defaults)
        for name in cls.__dict__.get("__annotations__", {}):
            if name.startswith("_"):
                continue
            if name not in fields:
                fields.append(name)
            value = cls.__dict__.get(name, _MISSING)
            if value is not _MISSING:
                if isinstance(value, (list, dict, set)):
                    raise TypeError(f"{cls.__name__}.{name}: mutable default")
                defaults[name] = value
            elif fields and defaults and name not in defaults and any(
                    f in defaults for f in fields[:fields.index(name)]):
                raise TypeError(f"{cls.__name__}.{name}: field without default after "
                                "fields with defaults")
        cls._fields = tuple(fields)
        cls._defaults = defaults
        cls._compared = tuple(f for f in fields if f not in cls._nocompare)

    def __init__(self, *args, **kwargs):
        fields = self._fields
        if not kwargs and len(args) == len(fields):     # the common case, kept fast
            self.__dict__.update(zip(fields, args))
            return
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} arguments")
        values = dict(zip(fields, args))
        for key, value in kwargs.items():
            if key not in fields:
                raise TypeError(f"{type(self).__name__}: unexpected field {key!r}")
            if key in values:
                raise TypeError(f"{type(self).__name__}: {key!r} given twice")
            values[key] = value
        defaults = self._defaults
        for name in fields:
            if name not in values:
                if name not in defaults:
                    raise TypeError(f"{type(self).__name__}: missing field {name!r}")
                values[name] = defaults[name]
        self.__dict__.update(values)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    __delattr__ = __setattr__

    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in self._compared)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def replace(self, **changes):
        """A copy with some fields changed."""
        values = {f: getattr(self, f) for f in self._fields}
        values.update(changes)
        return type(self)(**values)

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self._fields}


class Record(Frozen):
    """Like Frozen, but fields can be assigned (and instances are not hashable)."""

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    __hash__ = None


class suppress:
    """contextlib.suppress, without importing contextlib (and functools, collections) on
    the job-start path."""

    __slots__ = ("exceptions",)

    def __init__(self, *exceptions):
        self.exceptions = exceptions

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, self.exceptions)
