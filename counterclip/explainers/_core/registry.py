"""The explainer methods, in one registry: name, typed options, modalities, description and function.

`counterclip.explainers.explain`, the ``explain`` CLI command, ``counterclip eval explainers`` and the
contract tests all read this registry, so a new method is one module (its options dataclass, its
function, its `Method`) plus one `register_method` call in ``counterclip/explainers/__init__.py``.

Examples::

    @dataclass(frozen=True)
    class SaliencyOptions:
        absolute: bool = True  # |gradient| instead of the signed gradient

    def saliency(model, inputs, target, modality, options: SaliencyOptions) -> Explanation: ...

    register_method(Method("saliency", "plain input gradients", ("image",), SaliencyOptions, saliency))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from counterclip.errors import InputError
from counterclip.explainers.base import Explanation

ALL_MODALITIES: tuple[str, ...] = ("image", "text", "both")


@dataclass(frozen=True)
class Method:
    """One explainer method.

    Attributes:
        name: what ``method=`` / ``--method`` takes.
        description: one line for listings.
        modalities: of ``image`` (a map over pixels and patches), ``text`` (over tokens), ``both``.
        options: a frozen dataclass whose fields (with defaults) are the method's options.
        run: ``(model, inputs, target, modality, options) -> Explanation``.
        attribution: the map ranks input regions by their evidence for the score, so pointing and
            deletion / insertion apply (False for maps of a change, like the pixel counterfactual's).
        evaluation_options: the settings ``counterclip eval explainers`` uses (modest cost).
        cheap_options: the cheapest settings that still run every code path (contract tests, smoke runs).
        figures: per explanation, method-specific figures the evaluation averages (e.g. IG's delta).
    """

    name: str
    description: str
    modalities: tuple[str, ...]
    options: type
    run: typing.Callable[..., Explanation]
    attribution: bool = True
    evaluation_options: Mapping[str, Any] = field(default_factory=dict)
    cheap_options: Mapping[str, Any] = field(default_factory=dict)
    figures: typing.Callable[[Explanation], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.options):
            raise TypeError(f"method {self.name}: options must be a dataclass, got {self.options!r}")
        bad = set(self.modalities) - set(ALL_MODALITIES)
        if bad or not self.modalities:
            raise ValueError(f"method {self.name}: modalities must be among {ALL_MODALITIES}, got {bad}")
        self.make_options(self.evaluation_options)
        self.make_options(self.cheap_options)

    def option_names(self) -> tuple[str, ...]:
        """The method's options, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self.options))

    def defaults(self) -> dict[str, Any]:
        """Each option's default value."""
        return dataclasses.asdict(self.options())

    def check_known(self, names: typing.Iterable[str]) -> None:
        """Raise an `InputError` naming the method and its options if any of ``names`` is not one."""
        unknown = sorted(set(names) - set(self.option_names()))
        if unknown:
            known = ", ".join(self.option_names()) or "none"
            raise InputError(
                f"unknown option(s) for method {self.name}: {', '.join(unknown)} (its options: {known})"
            )

    def make_options(self, values: Mapping[str, Any]) -> Any:
        """The options object for ``values`` (missing ones take their defaults; unknown ones raise)."""
        self.check_known(values)
        return self.options(**values)

    def parse_options(self, texts: Mapping[str, str]) -> dict[str, Any]:
        """Option values typed from strings (``--option KEY=VALUE``) by the options' annotations."""
        self.check_known(texts)
        hints = typing.get_type_hints(self.options)
        return {name: _coerce(text, hints[name], self.name, name) for name, text in texts.items()}

    def check_modality(self, modality: str) -> None:
        """Raise an `InputError` unless the method supports ``modality``."""
        if modality not in self.modalities:
            raise InputError(
                f"method {self.name} supports modality {', '.join(self.modalities)}, not {modality!r}"
            )


def _coerce(text: str, annotation: Any, method: str, name: str) -> Any:
    """``text`` as a value of ``annotation`` (bool, int, float, str, a sequence of those, a union, None)."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if type(None) in options and text.strip().lower() in ("", "none"):
        return None
    for kind in (o for o in options if o is not type(None)):
        try:
            return _coerce_one(text, kind)
        except ValueError:
            continue
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise InputError(f"option {name} of method {method} must be {wanted}, got {text!r}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _coerce_one(text: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (tuple, list, Sequence):
        (item,) = typing.get_args(kind)[:1] or (str,)
        values = tuple(_coerce_one(part.strip(), item) for part in text.split(",") if part.strip())
        return values if origin is not list else list(values)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if kind in (int, float, str):
        return kind(text.strip()) if kind is not str else text
    raise ValueError(f"cannot read {kind} from text")


class MethodRegistry:
    """Methods by name, in registration order."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def register(self, method: Method) -> Method:
        """Add ``method``; a taken name is an error."""
        if method.name in self._methods:
            raise ValueError(f"an explainer method named {method.name!r} is already registered")
        self._methods[method.name] = method
        return method

    def remove(self, name: str) -> None:
        """Drop a method (tests; a plug-in replacing one)."""
        self._methods.pop(name, None)

    def get(self, name: str) -> Method:
        """The method called ``name``; an unknown name is an `InputError` listing the known ones."""
        if name not in self._methods:
            raise InputError(f"unknown method {name!r}; expected one of {', '.join(self._methods)}")
        return self._methods[name]

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._methods)

    def __iter__(self) -> Iterator[Method]:
        return iter(tuple(self._methods.values()))


REGISTRY = MethodRegistry()
register_method = REGISTRY.register


class _Names(Sequence):
    """A live, read-only view of the registered method names (``METHODS``)."""

    def __getitem__(self, index: Any) -> Any:
        return REGISTRY.names()[index]

    def __len__(self) -> int:
        return len(REGISTRY.names())

    def __repr__(self) -> str:
        return repr(REGISTRY.names())


class _PerMethod(Mapping):
    """A live, read-only view ``name -> attribute`` over the registered methods."""

    def __init__(self, read: typing.Callable[[Method], Any]) -> None:
        self._read = read

    def __getitem__(self, name: str) -> Any:
        if name not in REGISTRY.names():
            raise KeyError(name)
        return self._read(REGISTRY.get(name))

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY.names())

    def __len__(self) -> int:
        return len(REGISTRY.names())

    def __repr__(self) -> str:
        return repr(dict(self))


METHODS: Sequence[str] = _Names()
MODALITIES: Mapping[str, tuple[str, ...]] = _PerMethod(lambda m: m.modalities)
OPTIONS: Mapping[str, tuple[str, ...]] = _PerMethod(lambda m: m.option_names())


def by_modality(
    modality: str,
    image_map: typing.Callable[[], Explanation],
    text_map: typing.Callable[[], Explanation],
) -> Explanation:
    """Run the image map, the text map, or both (image first) merged into one `Explanation`."""
    if modality == "image":
        return image_map()
    if modality == "text":
        return text_map()
    return merge(image_map(), text_map())


def merge(image_exp: Explanation, text_exp: Explanation) -> Explanation:
    """One `Explanation` holding an image map and a text map (costs added, extras prefixed ``text_``)."""
    image_exp.modality = "both"
    image_exp.tokens, image_exp.token_map = text_exp.tokens, text_exp.token_map
    image_exp.forward_passes += text_exp.forward_passes
    image_exp.backward_passes += text_exp.backward_passes
    image_exp.seconds += text_exp.seconds
    image_exp.extras.update({f"text_{k}": v for k, v in text_exp.extras.items()})
    return image_exp
