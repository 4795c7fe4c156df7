"""Feature flags: which model version answers a request, and which versions are scored beside it in shadow.

The flags are OpenFeature flags served by flagd's in-process provider over a flags file (``flags/flags.flagd.json``
by default; flagd's own format). The provider owns evaluation: targeting, and ``fractional`` splits by a hash of
the entity, so an arm assignment is flagd's own algorithm (MurmurHash3 of the bucketing key, see README). Trellis
reads two flags per model:

- ``<model>.model`` (a string flag): each variant's value names a model version, ``alias:<alias>`` (resolved in
  the registry, followed when the alias moves) or ``version:<n>`` (pinned). Its split is the canary or the A/B
  test: ``{"fractional": [{"cat": ["<salt>", {"var": "targetingKey"}]}, ["champion", 95], ["challenger", 5]]}``,
  with a per-experiment salt in the bucketing key and the experiment's name in the flag's ``metadata``;
- ``<model>.shadow`` (an object flag): each variant's value is a list of such references, scored after the
  response on the same features and logged beside the answer (``role: shadow`` in the decision log).

``metadata.unit`` names the request field whose value is the targeting key (the unit of randomisation, e.g.
``customer_id``): every flag with targeting declares it.

A flags file takes effect only once every version it names is loaded: the provider's file connector hands each
parsed file to its flag store, and ``Flags`` stands in front of that store (``_Gate``), checks the file, loads the
versions (off the request path, on the connector's thread) and only then lets the provider swap its flags. A file
that cannot be applied (bad JSON, an unknown alias, a variant that is not declared) is refused whole and the
previous flags keep serving; ``Flags.error`` says why, naming file, line, field and value.

Per request: one evaluation per flag through the OpenFeature client. A flag without targeting resolves with reason
``STATIC`` (the same answer for every context, OpenFeature's definition): that answer is kept until the flags
change, so a static flag costs a dictionary lookup.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trellis.scorer import LoadedModel
from trellis.spec import Model

log = logging.getLogger("trellis.flags")

MODEL_FLAG = "{model}.model"
SHADOW_FLAG = "{model}.shadow"
FLAGS_FILE = Path("flags") / "flags.flagd.json"
TARGETING_KEY = {"var": "targetingKey"}


class FlagsError(ValueError):
    """A flags file Trellis cannot apply: ``str()`` is one line naming file, line, field and what is wrong."""

    def __init__(self, path: str | Path, line: int | None, field: str, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {field}: {message}")


@dataclass(frozen=True)
class ModelRef:
    """``alias:<name>`` or ``version:<n>``."""

    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: Any) -> ModelRef:
        if isinstance(text, str):
            kind, _, name = text.partition(":")
            if kind == "alias" and name and name.strip() == name:
                return cls(alias=name)
            if kind == "version" and name.isdigit() and int(name) > 0:
                return cls(version=str(int(name)))
        raise ValueError(f"{text!r} is not a model version: write 'alias:<alias>' or 'version:<n>'")

    def __str__(self) -> str:
        return f"alias:{self.alias}" if self.alias is not None else f"version:{self.version}"


@dataclass(frozen=True)
class Split:
    """One ``fractional`` split: the salt before the targeting key and each variant's weight."""

    salt: str
    weights: tuple[tuple[str, int], ...]

    def shares(self) -> dict[str, float]:
        total = sum(w for _, w in self.weights)
        return {variant: (w / total if total else 0.0) for variant, w in self.weights}


@dataclass(frozen=True)
class FlagPlan:
    """What Trellis reads of one flag: each variant's model references, the default, unit, experiment, splits."""

    key: str
    variants: Mapping[str, tuple[str, ...]]
    default: str | None
    unit: str | None
    experiment: str | None
    splits: tuple[Split, ...]


@dataclass(frozen=True)
class FlagsPlan:
    model: FlagPlan | None
    shadow: FlagPlan | None

    @property
    def refs(self) -> frozenset[str]:
        """Every model reference a variant names."""
        return frozenset(r for plan in (self.model, self.shadow) if plan is not None
                         for refs in plan.variants.values() for r in refs)


def _line(text: str, *needles: str) -> int | None:
    """The line of the last of ``needles``, each searched after the previous one (JSON has no positions)."""
    at = 0
    for needle in needles:
        found = text.find(needle, at)
        if found < 0:
            return None
        at = found
    return text.count("\n", 0, at) + 1 if needles else None


def _resolve_refs(node: Any, evaluators: Mapping[str, Any]) -> Any:
    """``{"$ref": name}`` replaced by ``$evaluators[name]``, as flagd does."""
    if isinstance(node, dict):
        if set(node) == {"$ref"} and node["$ref"] in evaluators:
            return _resolve_refs(evaluators[node["$ref"]], evaluators)
        return {k: _resolve_refs(v, evaluators) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, evaluators) for v in node]
    return node


def _fractionals(node: Any) -> Iterable[list[Any]]:
    if isinstance(node, dict):
        for op, args in node.items():
            if op == "fractional":
                yield args if isinstance(args, list) else [args]
            yield from _fractionals(args)
    elif isinstance(node, list):
        for item in node:
            yield from _fractionals(item)


def _check_flag(key: str, entry: Any, *, shadow: bool, request_fields: Collection[str], evaluators: Mapping[str, Any],
                path: str | Path, text: str) -> FlagPlan:
    def fail(field: str, message: str, *needles: str) -> FlagsError:
        return FlagsError(path, _line(text, f'"{key}"', *needles), f"{key}.{field}" if field else key, message)

    if not isinstance(entry, dict):
        raise fail("", f"a flag is an object with state, variants and defaultVariant, got {entry!r}")
    variants = entry.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise fail("variants", "declare at least one variant", '"variants"')
    refs: dict[str, tuple[str, ...]] = {}
    for variant, value in variants.items():
        values = value if shadow else [value]
        if shadow and not isinstance(value, list):
            raise fail(f"variants.{variant}", f"a shadow variant is a list of model versions, got {value!r}",
                       '"variants"', f'"{variant}"')
        try:
            refs[variant] = tuple(dict.fromkeys(str(ModelRef.parse(v)) for v in values))
        except ValueError as exc:
            raise fail(f"variants.{variant}", str(exc), '"variants"', f'"{variant}"') from None
    default = entry.get("defaultVariant")
    if default not in (None, "") and default not in variants:
        raise fail("defaultVariant", f"{default!r} is not a variant; declared: {', '.join(variants)}",
                   '"defaultVariant"')
    metadata = entry.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise fail("metadata", f"metadata is an object, got {metadata!r}", '"metadata"')
    unit, experiment = metadata.get("unit"), metadata.get("experiment")
    if unit is not None and unit not in request_fields:
        raise fail("metadata.unit", f"{unit!r} is not a field of the scoring request; fields: "
                                    f"{', '.join(sorted(request_fields))}", '"unit"')
    if experiment is not None and (not isinstance(experiment, str) or not experiment):
        raise fail("metadata.experiment", f"an experiment is named by a non-empty string, got {experiment!r}",
                   '"experiment"')
    targeting = _resolve_refs(entry.get("targeting") or {}, evaluators)
    if targeting and unit is None:
        raise fail("metadata.unit", "a flag with targeting names its unit of randomisation, the request field "
                                    "whose value is the targeting key (e.g. \"unit\": \"customer_id\")",
                   '"targeting"')
    splits = []
    for args in _fractionals(targeting):
        bucket = args[0] if args else None
        cat = bucket.get("cat") if isinstance(bucket, dict) and len(bucket) == 1 else None
        if not (isinstance(cat, list) and len(cat) == 2 and isinstance(cat[0], str) and cat[0]
                and cat[1] == TARGETING_KEY):
            raise fail("targeting.fractional", "a split buckets by a per-experiment salt and the targeting key: "
                                               '{"cat": ["<salt>", {"var": "targetingKey"}]} first, got '
                                               f"{json.dumps(bucket)}", '"fractional"')
        weights = []
        for arm in args[1:]:
            if not (isinstance(arm, list) and 1 <= len(arm) <= 2 and arm[0] in variants
                    and (len(arm) == 1 or (type(arm[1]) is int and arm[1] >= 0))):
                raise fail("targeting.fractional", f"an arm is [variant, weight] with a declared variant and a "
                                                   f"whole weight >= 0, got {json.dumps(arm)}; variants: "
                                                   f"{', '.join(variants)}", '"fractional"', json.dumps(arm[0])
                           if isinstance(arm, list) and arm else '"fractional"')
            weights.append((arm[0], arm[1] if len(arm) == 2 else 1))
        splits.append(Split(cat[0], tuple(weights)))
    if splits and not shadow and experiment is None:
        raise fail("metadata.experiment", "a split of the served model is an experiment (a canary, an A/B test): "
                                          "name it in metadata.experiment", '"fractional"')
    return FlagPlan(key, refs, default or None, unit, experiment, tuple(splits))


def check_flags(data: Any, *, model: str, request_fields: Collection[str], path: str | Path = "flags",
                text: str = "") -> FlagsPlan:
    """What Trellis reads of a flags file (``data`` parsed, ``text`` as written, for line numbers): the flags of
    ``model``, checked; ``FlagsError`` on the first problem. Other flags in the file are the provider's alone."""
    if not isinstance(data, dict) or not isinstance(data.get("flags"), dict):
        raise FlagsError(path, None, "flags", 'a flags file is an object with "flags": {...}')
    flags, evaluators = data["flags"], data.get("$evaluators") or {}
    model_key, shadow_key = MODEL_FLAG.format(model=model), SHADOW_FLAG.format(model=model)
    if not flags:  # the empty document `trellis init` writes: no flag, the alias serves every request
        return FlagsPlan(None, None)
    if model_key not in flags and shadow_key not in flags:
        raise FlagsError(path, None, "flags", f"no flag of model {model!r}: declare {model_key!r} (the version "
                                              f"served) and optionally {shadow_key!r} (versions in shadow)")
    plans = [None if key not in flags else _check_flag(key, flags[key], shadow=key == shadow_key,
                                                       request_fields=request_fields, evaluators=evaluators,
                                                       path=path, text=text)
             for key in (model_key, shadow_key)]
    return FlagsPlan(*plans)


def read_flags(path: str | Path, *, model: str, request_fields: Collection[str]) -> FlagsPlan:
    """The flags file at ``path`` checked (``check_flags``)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlagsError(path, exc.lineno, "flags", f"not JSON: {exc.msg}") from None
    return check_flags(data, model=model, request_fields=request_fields, path=path, text=text)


def example_flags(model: Model) -> dict[str, Any]:
    """The starting flags of ``model``: the champion serves everyone (no targeting: a split, even at 0 %, costs
    every request 50-70 us of flag evaluation; the README shows the canary to add), the challenger in shadow
    (skipped while it is the champion's version)."""
    experiment = f"{model.name}-canary-1"
    unit = model.card_key or model.label.join_key
    return {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            MODEL_FLAG.format(model=model.name): {
                "state": "ENABLED",
                "variants": {"champion": "alias:champion", "challenger": "alias:challenger"},
                "defaultVariant": "champion",
                "metadata": {"experiment": experiment, "unit": unit},
            },
            SHADOW_FLAG.format(model=model.name): {
                "state": "ENABLED",
                "variants": {"off": [], "challenger": ["alias:challenger"]},
                "defaultVariant": "challenger",
            },
        },
    }


def with_canary(document: dict[str, Any], model: Model, percent: int) -> dict[str, Any]:
    """``document`` (flags of ``model``) with a canary of the challenger on ``percent`` % of the units, bucketed
    by flagd's ``fractional`` with the experiment's salt (the experiment named in the model flag's metadata)."""
    flag = copy.deepcopy(document)["flags"][MODEL_FLAG.format(model=model.name)]
    experiment = flag["metadata"]["experiment"]
    flag["targeting"] = {"fractional": [{"cat": [f"{experiment}/", TARGETING_KEY]},
                                        ["champion", 100 - percent], ["challenger", percent]]}
    out = copy.deepcopy(document)
    out["flags"][MODEL_FLAG.format(model=model.name)] = flag
    return out


class UnloadableModel(RuntimeError):
    def __init__(self, ref: str, message: str):
        self.ref = ref
        super().__init__(message)


class ServedModels:
    """The model versions the flags name, loaded and ready: a mapping reference -> ``LoadedModel`` replaced whole
    (a request reads one snapshot). ``resolve(alias)`` gives an alias's version, ``load(version)`` a servable
    model (both slow: called only here, never on the request path)."""

    def __init__(self, resolve: Callable[[str], str], load: Callable[[str], LoadedModel]):
        self._resolve, self._load = resolve, load
        self.snapshot: Mapping[str, LoadedModel] = {}
        self._versions: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def _model(self, ref: str, version: str | None = None) -> LoadedModel:
        parsed = ModelRef.parse(ref)
        try:
            version = version or parsed.version or self._resolve(parsed.alias)
            model = self._versions.get(version)
            if model is None:
                model = self._versions[version] = self._load(version)
        except Exception as exc:
            raise UnloadableModel(ref, f"{type(exc).__name__}: {exc}") from None
        return dataclasses.replace(model, alias=parsed.alias)

    def ensure(self, refs: Iterable[str]) -> None:
        """Every reference in ``refs`` loaded (those already loaded are kept as they are); ``UnloadableModel`` on
        the first that cannot be, and then nothing changes."""
        with self._lock:
            snapshot = dict(self.snapshot)
            for ref in sorted(set(refs) - set(snapshot)):
                snapshot[ref] = self._model(ref)
            self.snapshot = snapshot

    def retain(self, refs: Iterable[str]) -> None:
        """Only ``refs`` kept (in-flight requests keep the models they hold)."""
        with self._lock:
            keep = set(refs)
            self.snapshot = {ref: m for ref, m in self.snapshot.items() if ref in keep}
            used = {m.version for m in self.snapshot.values()}
            self._versions = {v: m for v, m in self._versions.items() if v in used}

    def refresh(self) -> list[str]:
        """Each alias re-resolved and its new version loaded; returns the problems (a reference that could not be
        refreshed keeps its loaded version)."""
        problems = []
        with self._lock:
            snapshot = dict(self.snapshot)
            for ref, model in snapshot.items():
                if model.alias is None:
                    continue
                try:
                    version = self._resolve(model.alias)
                    if version != model.version:
                        snapshot[ref] = self._model(ref, version)
                        log.info("flags: %s now version %s (was %s)", ref, version, model.version)
                except Exception as exc:
                    problems.append(f"{ref}: {type(exc).__name__}: {exc}")
            self.snapshot = snapshot
        return problems


@dataclass(frozen=True, slots=True)
class Assignment:
    """What the flags decided for one request: the version that answers (None: the service's own), the versions
    in shadow, and what the response and the decision log say of it (``rollout``)."""

    model: LoadedModel | None
    shadows: tuple[LoadedModel, ...]
    rollout: dict[str, Any]
    shadow_variant: str | None = None


NO_FLAGS = Assignment(None, (), {"flag": None, "variant": None, "reason": "DEFAULT", "experiment": None,
                                 "arm": None})


class _Gate:
    """Stands in front of the provider's flag store: a parsed flags file reaches the store only once it checks
    and every version it names is loaded; otherwise the previous flags stay and ``Flags.error`` says why."""

    def __init__(self, store: Any, flags: Flags):
        self.store, self.flags = store, flags
        flags._store = store

    def update(self, data: dict) -> None:
        with self.flags._apply_lock:
            self.flags._apply(data, self.store)


class Flags:
    """The flags of one model from the flags file at ``path``, evaluated per request by ``assign``.

    ``models`` loads what the flags name; ``fallback()`` is the service's own model (it answers when the model
    flag is missing or resolves to nothing loaded); ``default_ref`` its reference, the OpenFeature default value."""

    _domains = itertools.count()

    def __init__(self, path: str | Path, model: str, *, request_fields: Collection[str], models: ServedModels,
                 default_ref: str, fallback: Callable[[], LoadedModel | None], poll_ms: int = 500):
        self.path = Path(path)
        self.model, self.request_fields, self.models = model, frozenset(request_fields), models
        self.model_key, self.shadow_key = MODEL_FLAG.format(model=model), SHADOW_FLAG.format(model=model)
        self.default_ref, self.fallback, self.poll_ms = default_ref, fallback, poll_ms
        self.domain = f"trellis.{model}.{next(self._domains)}"
        self.plan: FlagsPlan | None = None
        self.applied_error: str | None = None  # the last file Trellis refused (kept the previous flags)
        self.provider_error: str | None = None  # the provider could not read the file
        self._pending: dict | None = None  # a refused file, tried again by refresh()
        self._reported: str | None = None  # the problem last logged: each is logged once, and its fix once
        self._report_lock = threading.Lock()
        self._static: dict[str, tuple[int, Any]] = {}  # flag -> (generation, details) of a STATIC resolution
        self._generation = 0
        self._apply_lock = threading.Lock()
        self._store: Any = None  # the provider's flag store (behind the gate)
        self._client: Any = None
        self._provider: Any = None
        self._connector: Any = None  # the provider's file connector

    # -- the provider --------------------------------------------------------------------------------------

    def start(self) -> None:
        """The provider started over the file (the file applied now, on this thread) and watching it."""
        from openfeature import api
        from openfeature.contrib.provider.flagd import FlagdProvider
        from openfeature.contrib.provider.flagd.config import ResolverType
        from openfeature.contrib.provider.flagd.resolvers.process.connector.file_watcher import FileWatcher
        from openfeature.event import ProviderEvent

        provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(self.path),
                                 deadline_ms=self.poll_ms)  # the file connector polls every deadline_ms
        connector = getattr(provider.resolver, "connector", None)
        if not isinstance(connector, FileWatcher) or not hasattr(connector, "flag_store"):
            raise RuntimeError("openfeature-provider-flagd changed its file connector: trellis.flags needs its "
                               "flag_store to apply a flags file only once its models are loaded")
        connector.flag_store = _Gate(connector.flag_store, self)
        # The connector re-reads a file it could not parse at every poll, and its own handler logs a traceback each
        # time: ours keeps the problem as one line (file, line, what) and tells the provider only when it changes.
        self._connector = connector
        connector.handle_error = self._file_error
        self._provider = provider
        self._client = api.get_client(domain=self.domain)
        self._client.add_handler(ProviderEvent.PROVIDER_ERROR, self._on_error)
        try:
            api.set_provider_and_wait(provider, domain=self.domain)
        except Exception as exc:  # no file, not JSON: the service's own model answers; the watcher keeps trying
            cause = exc.__cause__ or exc
            self.provider_error = f"{self._problem(f'{type(cause).__name__}: {cause}')}; serving " \
                                  f"{self.default_ref} until the flags can be read"
            self._report()

    def stop(self) -> None:
        if self._provider is None:
            return
        from openfeature import api
        from openfeature.event import ProviderEvent
        from openfeature.provider.no_op_provider import NoOpProvider

        api.set_provider(NoOpProvider(), domain=self.domain)  # shuts the flagd provider (and its watcher) down
        self._client.remove_handler(ProviderEvent.PROVIDER_ERROR, self._on_error)
        self._provider = None

    def _problem(self, message: str) -> str:
        """One line naming the file and what is wrong with it (for JSON, the line and column)."""
        try:
            json.loads(self.path.read_text())
        except FileNotFoundError:
            return f"{self.path}: no such file"
        except json.JSONDecodeError as exc:
            return str(FlagsError(self.path, exc.lineno, "flags", f"not JSON: {exc.msg} (column {exc.colno})"))
        except (OSError, UnicodeDecodeError) as exc:
            return f"{self.path}: cannot be read: {exc}"
        return f"{self.path}: {message}"

    def _file_error(self, message: str) -> None:
        """The connector's error handler (it could not read or parse the file): the provider told once per
        problem, the problem logged once."""
        from openfeature.event import ProviderEventDetails
        from openfeature.exception import ErrorCode

        serving = "still serving the previous flags" if self.plan is not None else \
            f"serving {self.default_ref} until the flags can be read"
        error = f"{self._problem(message)}; {serving}"
        connector = self._connector
        connector.should_emit_ready_on_success = True
        if error != self.provider_error:
            self.provider_error = error
            connector.emit_provider_error(ProviderEventDetails(message=error, error_code=ErrorCode.PARSE_ERROR))
        self._report()

    def _on_error(self, details: Any) -> None:
        """Another error of the provider than the file's (those are ``_file_error``'s, which emits them: the
        handlers run later, on the SDK's event threads, so this one never sets what the file's fix has cleared).
        A problem is cleared only by a file applied (``_apply``)."""
        message = str(details.message or details.error_code)
        if self.provider_error is None and not message.startswith(str(self.path)):
            self.provider_error = f"{self.path}: {message}; still serving the previous flags"
            self._report()

    def _report(self, applied: str | None = None) -> None:
        """Log what changed: a new problem once (a warning, one line), its fix once, a file applied. (Called from
        the connector's thread, the SDK's event threads and ``refresh``: one at a time.)"""
        with self._report_lock:
            error = self.error
            if error is not None and error != self._reported:
                log.warning("flags: %s", error)
            elif error is None and self._reported is not None:
                log.info("flags: %s fixed%s", self.path, f": applied ({applied})" if applied else "")
            elif error is None and applied:
                log.info("flags: %s applied (%s)", self.path, applied)
            self._reported = error

    @property
    def error(self) -> str | None:
        return self.applied_error or self.provider_error

    def _apply(self, data: dict, store: Any) -> None:
        """A parsed flags file (from the provider's connector thread, or ``refresh``; the caller holds
        ``_apply_lock``): checked, its versions loaded, then handed to the provider's store; or refused whole."""
        try:
            try:
                text = self.path.read_text()
            except OSError:
                text = ""
            plan = check_flags(data, model=self.model, request_fields=self.request_fields, path=self.path,
                               text=text)
            try:
                self.models.ensure(plan.refs)
            except UnloadableModel as exc:
                field, needles = self._named_by(plan, exc.ref)
                raise FlagsError(self.path, _line(text, *needles), field,
                                 f"{exc.ref!r} cannot be loaded: {exc}") from None
        except FlagsError as exc:
            # The provider read the file (it handed it over): a problem reading it is over, this one replaces it.
            self.applied_error, self.provider_error = f"{exc}; still serving the previous flags", None
            self._pending = data
            self._report()
            return
        store.update(data)
        # The provider read the file (it handed it over), so any earlier problem reading it is over too.
        self.plan, self.applied_error, self.provider_error, self._pending = plan, None, None, None
        self._generation += 1  # static answers kept from the previous flags are stale now
        self.models.retain(plan.refs)
        self._report(", ".join(sorted(plan.refs)) or "no model versions")

    @staticmethod
    def _named_by(plan: FlagsPlan, ref: str) -> tuple[str, tuple[str, ...]]:
        for flag in (plan.model, plan.shadow):
            for variant, refs in (flag.variants.items() if flag else ()):
                if ref in refs:
                    return f"{flag.key}.variants.{variant}", (f'"{flag.key}"', '"variants"', f'"{variant}"')
        return "flags", ()

    def refresh(self) -> list[str]:
        """Aliases re-resolved (a moved alias loads its new version), and a file refused because a version could
        not be loaded tried again; returns the problems."""
        problems = self.models.refresh()
        with self._apply_lock:
            if self._pending is not None and self._store is not None:
                try:
                    self._apply(self._pending, self._store)
                except Exception as exc:  # the provider's own check of the file (flagd's flag syntax)
                    problems.append(f"{self.path}: {type(exc).__name__}: {exc}")
        return problems

    # -- per request -------------------------------------------------------------------------------------

    def _details(self, key: str, default: Any, request: Mapping[str, Any], units: dict[str | None, Any],
                 kind: str) -> Any:
        cached = self._static.get(key)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        from openfeature.evaluation_context import EvaluationContext
        from openfeature.flag_evaluation import Reason

        generation = self._generation  # read before evaluating: an answer of older flags is never kept as newer
        applied = self.plan
        plan = applied and (applied.model if key == self.model_key else applied.shadow)
        unit = plan.unit if plan else None
        context = units.get(unit)
        if context is None:
            value = request.get(unit) if unit else None
            context = units[unit] = EvaluationContext(None if value is None else str(value), request)
        if kind == "string":
            details = self._client.get_string_details(key, default, context)
        else:
            details = self._client.get_object_details(key, default, context)
        if details.reason == Reason.STATIC or applied is None:
            # One answer for every request: a flag without targeting, or no flags applied at all (a file refused
            # from the start: the alias serves), which costs nothing per request then (two SDK evaluations,
            # ~50-70 us each, before). Applying a file moves the generation on.
            self._static[key] = (generation, details)
        return details

    def assign(self, request: Mapping[str, Any]) -> Assignment:
        """The model flag and the shadow flag evaluated for ``request`` (the OpenFeature client, flagd's
        in-process evaluation)."""
        plan = self.plan
        if plan is not None and plan.model is None and plan.shadow is None:  # an empty flags document
            return NO_FLAGS
        models, units = self.models.snapshot, {}
        details = self._details(self.model_key, self.default_ref, request, units, "string")
        model = models.get(details.value)
        reason = str(details.reason)
        if model is None:  # the flag is missing or disabled (the default), or names nothing loaded (never: _Gate)
            model = self.fallback()
            reason = reason if details.value == self.default_ref else "ERROR"
        metadata = details.flag_metadata or {}
        experiment = metadata.get("experiment")
        rollout = {"flag": self.model_key, "variant": details.variant, "reason": reason,
                   "experiment": experiment, "arm": details.variant if experiment is not None else None}
        if details.error_code is not None:
            rollout["error"] = str(details.error_code)
        shadow = self._details(self.shadow_key, [], request, units, "object")
        shadows: tuple[LoadedModel, ...] = ()
        if shadow.value:
            served = None if model is None else model.version
            seen = {served}
            picked = []
            for ref in shadow.value if isinstance(shadow.value, list) else ():
                other = models.get(ref)
                if other is not None and other.version not in seen:
                    seen.add(other.version)
                    picked.append(other)
            shadows = tuple(picked)
        return Assignment(model, shadows, rollout, shadow.variant)


__all__ = ["FLAGS_FILE", "MODEL_FLAG", "NO_FLAGS", "SHADOW_FLAG", "Assignment", "FlagPlan", "Flags", "FlagsError",
           "FlagsPlan", "ModelRef", "ServedModels", "Split", "check_flags", "example_flags", "read_flags"]
