"""Registries of model backends: what a profile's ``backend:`` name builds.

Three kinds of stage are backed by a model, each with a registry:

=============  ==================  ===========================================  =====================
registry       profile section     built-in backends                            builds
=============  ==================  ===========================================  =====================
``GENERATORS`` ``generate``        ``flux`` (FLUX.1 via diffusers)               an image generator
``LOCALIZERS`` ``localize``        ``qwen2_5_vl`` (Qwen2.5-VL via transformers)  a box localiser
``SEGMENTERS`` ``segment``         ``sam2`` (SAM2 / SAM2.1 + the quality gate)   a mask predictor
=============  ==================  ===========================================  =====================

A backend is a factory ``factory(config, **context) -> Stage`` (``manifests.stage``):
``config`` is the profile section (``GenerateConfig``, ``LocalizeConfig``,
``SegmentConfig``), whose ``model`` is the model reference (``tiny``, a Hub id, a local
path) and whose ``options`` hold anything backend-specific; ``context`` holds what
other sections decide (the segmenter gets ``quality=`` and ``verifier=``).

Register a backend with ``GENERATORS.register("name", factory)`` (or as a decorator),
or name it in a profile as ``package.module:factory`` (imported on first use), so a
new backend needs no edit to ``flows/``. Built-ins are import paths too: nothing heavy
(torch, diffusers) is imported until a backend is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Factory = Callable[..., Any]


class UnknownBackend(ValueError):
    """A backend name that is neither registered nor a ``module:factory`` path."""


class Registry:
    """Backends of one kind by name; a name may also be a ``module:attribute`` import path."""

    def __init__(self, kind: str, section: str, builtin: dict[str, str]):
        self.kind = kind
        self.section = section
        self._factories: dict[str, Factory | str] = dict(builtin)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def names(self) -> list[str]:
        return sorted(self._factories)

    def register(self, name: str, factory: Factory | None = None):
        """Register ``factory`` under ``name`` (replacing an earlier one); usable as a decorator."""
        if not name or ":" in name:
            raise ValueError(f"backend name {name!r}: give a plain name (':' marks import paths)")

        def add(f: Factory) -> Factory:
            self._factories[name] = f
            return f

        return add(factory) if factory is not None else add

    def factory(self, name: str) -> Factory:
        """The factory of ``name``: registered, or imported from ``module:attribute``."""
        entry = self._factories.get(name, name if ":" in name else None)
        if entry is None:
            raise UnknownBackend(
                f"unknown {self.kind} backend {name!r} in `{self.section}.backend`: use one of {self.names()}, "
                "or a 'package.module:factory' import path of your own backend"
            )
        if isinstance(entry, str):
            module_name, _, attribute = entry.partition(":")
            try:
                target: Any = importlib.import_module(module_name)
                for part in attribute.split("."):
                    target = getattr(target, part)
            except (ImportError, AttributeError) as error:
                raise UnknownBackend(
                    f"{self.kind} backend {name!r}: cannot import {entry!r} ({error}); check the module "
                    "path and that its package is installed"
                ) from error
            if not callable(target):
                raise UnknownBackend(f"{self.kind} backend {name!r}: {entry!r} is not callable")
            entry = target
            if name in self._factories:
                self._factories[name] = entry
        return entry

    def build(self, config: Any, **context: Any) -> Any:
        """The stage of ``config.backend`` built from ``config`` (and ``context``)."""
        return self.factory(config.backend)(config, **context)


GENERATORS = Registry("image generator", "generate", {"flux": "generators.flux:from_config"})
LOCALIZERS = Registry("box localiser", "localize", {"qwen2_5_vl": "annotators.localize:from_config"})
SEGMENTERS = Registry("mask predictor", "segment", {"sam2": "annotators.segment:from_config"})
