"""One small registry for everything chosen by name: models, training methods, attacks, attack losses.

Entries register at their definition site (a decorator, like timm's ``register_model`` in
``timm/models/_registry.py``), a second entry under a taken name is refused, :meth:`Registry.names`
lists the names with a filter (like timm's ``list_models``: a shell pattern and metadata such as the
supported tasks or dimensions), and every lookup of an unknown name goes through one helper,
:func:`look_up`, that answers with "did you mean" (like MONAI's ``monai.utils.module.look_up_option``,
but raising medrobust's :class:`~medrobust.errors.ConfigError` with the project's one-sentence wording).

This module sits at the bottom of the import graph: it imports nothing of medrobust but the errors.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Optional, TypeVar, overload

from medrobust.errors import ConfigError

T = TypeVar("T")


def closest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> Optional[str]:
    """The choice closest to ``name`` (``difflib`` ratio at least ``cutoff``), or None.

    Args:
        name: what the user wrote.
        choices: the valid names.
        cutoff: the least similarity, 0-1, for a suggestion.

    Returns:
        The best matching choice, or None when none is close enough.
    """
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str], otherwise: str, cutoff: float = 0.6) -> str:
    """The second half of an "unknown name" sentence: ``did you mean 'x'?`` or ``otherwise``.

    Args:
        name: what the user wrote.
        choices: the valid names.
        otherwise: the sentence to give when no choice is close (e.g. ``choose one of a, b.``).
        cutoff: the least similarity, 0-1, for a suggestion.

    Returns:
        The hint, ending with ``?`` or with ``otherwise``'s own punctuation.
    """
    best = closest(name, choices, cutoff)
    return f"did you mean '{best}'?" if best is not None else otherwise


def look_up(name: str, choices: Mapping[str, T], what: str, cutoff: float = 0.4) -> T:
    """``choices[name]``, or a :class:`ConfigError` ``unknown <what> '<name>'; did you mean ...``.

    Args:
        name: the name to find.
        choices: the registered entries by name.
        what: what a name names, for the message (``attack``, ``training method``, ...).
        cutoff: the least similarity, 0-1, for a "did you mean" suggestion.

    Returns:
        The entry registered under ``name``.

    Raises:
        ConfigError: ``name`` is not registered (the message suggests the closest name, or lists them all).
    """
    if name in choices:
        return choices[name]
    hint = did_you_mean(name, choices.keys(), f"choose one of {', '.join(sorted(choices))}.", cutoff)
    raise ConfigError(f"unknown {what} '{name}'; {hint}")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries with per-entry metadata; a read-only mapping ``name -> entry``.

    ``REG.register`` is a decorator (``@REG.register`` takes the name from the entry's ``name``
    attribute; ``@REG.register(name="x", tasks=("segmentation",))`` gives it, with metadata).

    Args:
        what: what the names name, used in messages (``attack``, ``training method``, ``model``).
        cutoff: the least similarity for a "did you mean" suggestion in :meth:`lookup`.
    """

    def __init__(self, what: str, cutoff: float = 0.4) -> None:
        self.what = what
        self.cutoff = cutoff
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    # ---- registration ----------------------------------------------------------------
    def add(self, name: str, entry: T, **meta: Any) -> T:
        """Register ``entry`` under ``name`` with metadata; returns the entry.

        Raises:
            ConfigError: the name is empty, or another entry holds it already.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.what} needs a non-empty name to be registered (got {name!r}); set its name.")
        old = self._entries.get(name)
        if old is not None and old is not entry:
            raise ConfigError(f"{self.what} '{name}' is registered twice ({_origin(old)} and {_origin(entry)}); "
                              f"give the new one another name.")
        self._entries[name] = entry
        self._meta[name] = dict(meta)
        return entry

    @overload
    def register(self, entry: T) -> T: ...

    @overload
    def register(self, entry: None = None, *, name: Optional[str] = None, **meta: Any) -> Callable[[T], T]: ...

    def register(self, entry=None, *, name=None, **meta):
        """Decorator registering an entry at its definition (see the class docstring)."""

        def deco(obj: T) -> T:
            return self.add(name if name is not None else getattr(obj, "name", None), obj, **meta)

        return deco(entry) if entry is not None else deco

    # ---- lookup ----------------------------------------------------------------------
    def lookup(self, name: str) -> T:
        """The entry called ``name``.

        Raises:
            ConfigError: no entry has that name (with a "did you mean" suggestion).
        """
        return look_up(name, self._entries, self.what, self.cutoff)

    def meta(self, name: str) -> dict[str, Any]:
        """A copy of the metadata registered with ``name``.

        Raises:
            ConfigError: no entry has that name.
        """
        self.lookup(name)
        return dict(self._meta[name])

    def names(self, pattern: Optional[str] = None, **where: Any) -> list[str]:
        """Sorted names matching a shell ``pattern`` (``"resnet*"``) and metadata filters.

        A filter ``key=value`` keeps an entry whose metadata ``key`` equals ``value`` or, when the
        metadata is a tuple/list/set, contains it (``dims=3`` keeps entries with ``dims=(2, 3)``).
        A filter whose value is None is ignored.
        """
        out = []
        for n, m in self._meta.items():
            if pattern is not None and not fnmatch.fnmatchcase(n, pattern):
                continue
            if all(v is None or _matches(m.get(k), v) for k, v in where.items()):
                out.append(n)
        return sorted(out)

    # ---- mapping ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {sorted(self._entries)})"


def _matches(have: Any, want: Any) -> bool:
    if isinstance(have, (tuple, list, set, frozenset)):
        return want in have
    return have == want


def _origin(obj: Any) -> str:
    obj = getattr(obj, "builder", obj)  # model entries: name the builder function
    mod = getattr(obj, "__module__", None) or type(obj).__module__
    qual = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{mod}.{qual}"


__all__ = ["Registry", "closest", "did_you_mean", "look_up"]
