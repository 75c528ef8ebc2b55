"""How a config key is typed, and the one line a broken value reads as: the project's one validation mechanism.

Keys are pydantic types (``Int(ge=1)``, ``Float(gt=0) | None``, ``Choice("mean", "median")``) on pydantic models:
the config groups' (config/schema.py), the search preset's (search/spec.py), and the ``params`` of each
regularizer, task and tracker class. ``one_line`` turns a pydantic ``ValidationError`` into one line naming the key,
the value and what the key's declared type allows (``trainer.epochs=-1: must be an integer >= 1``), never pydantic's
own prose. Strict as a command line needs: an int is not a bool, ``"3"`` is not an int, a number is finite.

A leaf module: the schema, the tasks, the regularizers and the trackers declare their keys with it without
importing each other.
"""

from __future__ import annotations

import inspect
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from ..errors import ConfigError


def Int(**bounds) -> Any:  # a type, spelt as one
    """An integer (not a bool, not a string), with ``ge``/``gt``/``le``/``lt`` bounds."""
    return Annotated[int, Field(strict=True, **bounds)]


def Float(**bounds) -> Any:
    """A finite number (an integer too, not a bool), with bounds."""
    return Annotated[float, Field(strict=True, allow_inf_nan=False, **bounds)]


def _not_bool(value):
    if isinstance(value, bool):  # a Literal takes False for 0
        raise PydanticCustomError("literal_error", "not a bool")
    return value


def Choice(*values) -> Any:
    """One of ``values``."""
    return Annotated[Literal[values], BeforeValidator(_not_bool)]


Str = Annotated[str, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
List = Annotated[list, Field(strict=True)]
Mapping = Annotated[dict, Field(strict=True)]  # a free-form mapping (config_overrides, kwargs)
PROBABILITY = Float(ge=0, lt=1)


def invalid(text: str) -> PydanticCustomError:
    """Raise it from a validator when what a key allows is not its type: ``<key>=<value>: <text>``."""
    return PydanticCustomError("invalid", "{text}", {"text": text})


def refused(message: str) -> PydanticCustomError:
    """Raise it from a group's validator for a rule between keys: the whole line, as written."""
    return PydanticCustomError("refused", "{message}", {"message": message})


class _Missing:
    """A ``???`` value: a key the user must give."""

    def __repr__(self) -> str:
        return "???"


MISSING = _Missing()
HYDRA_KEYS = ("_target_", "_partial_")


def plain(node):
    """A config node as plain Python for validation: OmegaConf containers resolved, tuples as lists, ``???`` as
    ``MISSING``."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    return MISSING if isinstance(node, str) and node == "???" else node


def show(value) -> str:
    """A value as it is typed in an override: ``null``, ``true``/``false``, containers as plain lists and dicts."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def override_key(override: str) -> str:
    """The key a Hydra override sets: ``+trainer.epochs=3`` and ``~seed`` name ``trainer.epochs`` and ``seed``."""
    return override.split("=", 1)[0].lstrip("+~")


# --- what a declared type allows, in words ---

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
          dict: "a mapping"}
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def members(annotation) -> list:
    """The alternatives of a union (``X | None`` included), else the type itself."""
    return list(get_args(annotation)) if get_origin(annotation) in (Union, types.UnionType) else [annotation]


def nullable(annotation) -> bool:
    return type(None) in members(annotation)


def _split(annotation) -> tuple[Any, list]:
    """The base type of an ``Annotated`` and its constraints (a nested ``Field``'s unpacked)."""
    if get_origin(annotation) is not Annotated:
        return annotation, []
    base, *meta = get_args(annotation)
    flat = []
    for m in meta:
        flat += m.metadata if isinstance(m, FieldInfo) else [m]
    return base, flat


def model_of(annotation) -> type | None:
    """The pydantic model or dataclass an annotation holds (through ``| None``), else None."""
    for t in members(annotation):
        if isinstance(t, type) and hasattr(t, "__pydantic_fields__"):
            return t
    return None


def kind(annotation) -> type:
    """The plain type a key's value has (the first alternative's; a model is a mapping)."""
    t = next(t for t in members(annotation) if t is not type(None))
    base, _ = _split(t)
    if model_of(base) is not None:
        return dict
    return type(get_args(base)[0]) if get_origin(base) is Literal else get_origin(base) or base


def allowed(annotation) -> str:
    """What a declared type allows, as the messages have always said it: ``null or an integer >= 1``, ``one of
    cls, mean, attention``, ``0 or a number >= 0.01 and <= 100``."""
    alts = [t for t in members(annotation) if t is not type(None)]
    text = " or ".join(_one(t, alone=len(alts) == 1) for t in alts)
    return f"null or {text}" if nullable(annotation) else text


def _one(annotation, alone: bool) -> str:
    base, meta = _split(annotation)
    if get_origin(base) is Literal:
        values = get_args(base)
        return show(values[0]) if len(values) == 1 and not alone else f"one of {', '.join(map(show, values))}"
    if model_of(base) is not None:
        return "a mapping"
    bounds = [f"{op} {getattr(m, attr):g}" for attr, op in _BOUNDS for m in meta if getattr(m, attr, None) is not None]
    return " ".join([_NAMES[get_origin(base) or base], " and ".join(bounds)]).strip()


# --- the one formatter ---

UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")


def _not_a_key(key: str, owner: type) -> str:
    return f"{key}: not a key of this {owner.__name__} (known: {', '.join(sorted(owner.__pydantic_fields__))})"


def _locate(model: type, loc: tuple) -> tuple[list, FieldInfo | None, type]:
    """The dotted path of the key an error is about (the union-member tags pydantic adds dropped), its field and
    the model holding it."""
    path, field, owner = [], None, model
    for part in loc:
        path.append(part)
        fields = owner.__pydantic_fields__
        if part not in fields:  # a key the model does not have
            break
        field = fields[part]
        inner = model_of(field.annotation)
        if inner is None:  # a leaf: what follows names a union's member or a list's item
            break
        owner = inner
    return path, field, owner


def _at(tree, path: list):
    for part in path:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def one_line(err: ValidationError, model: type, tree, *, prefix: str = "", unknown=_not_a_key) -> str:
    """The first error of ``err`` (raised validating ``tree`` against ``model``) as one line; a rule between keys
    (``refused``) comes after every key's own. ``prefix``: put before each key (``hpo.``); ``unknown(key, owner)``:
    the line for a key the model does not have."""
    first = min(err.errors(), key=lambda e: e["type"] == "refused")
    if first["type"] == "refused":
        return first["ctx"]["message"]
    path, field, owner = _locate(model, first["loc"])
    key = prefix + ".".join(map(str, path))
    if first["type"] in UNKNOWN:
        return unknown(key, owner)
    value = _at(tree, path)
    if value is MISSING:
        return f"{key}: required, give it on the command line ({key}=...)"
    if first["type"] == "invalid":
        return f"{key}={show(value)}: {first['ctx']['text']}"
    return f"{key}={show(value)}: must be {allowed(field.rebuild_annotation()) if field else 'a mapping'}"


# --- keys that depend on a choice: a regularizer's, a task's, a tracker's, an optimizer's ---

_MODELS: dict[tuple[str, int], tuple[dict, type[BaseModel]]] = {}
_PARAMS = ConfigDict(extra="forbid", protected_namespaces=())


def params_model(what: str, params: dict) -> type[BaseModel]:
    """The model of a class's ``params`` (key -> type; None: any value, what it is given to checks it), named
    ``what`` for the messages. Cached by identity: ``params`` is a class's own table or a cached signature's."""
    cached = _MODELS.get((what, id(params)))
    if cached is None or cached[0] is not params:
        fields = {k: (Any if t is None else t, None) for k, t in params.items()}
        cached = _MODELS[what, id(params)] = params, create_model(what, __config__=_PARAMS, **fields)
    return cached[1]


def check_params(group: str, params: dict, values, what: str | None = None) -> None:
    """Check each key of a group whose keys depend on its choice against ``params``; ``what``: the group's noun in
    the message, when not ``group``."""
    values = {k: v for k, v in plain(values).items() if k not in HYDRA_KEYS}
    model = params_model(what or group, params)
    try:
        model.model_validate(values)
    except ValidationError as err:
        raise ConfigError(one_line(err, model, values, prefix=f"{group}.")) from None


SET_BY_BUILD = ("params", "optimizer", "num_warmup_steps", "num_training_steps")  # optim.py passes these itself


def keyword_params(fn, known: dict) -> dict | None:
    """The keyword arguments of ``fn`` (a class: its constructor's) a config may give, each with its type: from
    ``known``, else true/false or a number after its default, else None (the callee checks the value); None for
    all of them when ``fn`` takes ``**kwargs``. Call it through a cache (``params_model`` caches by identity)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    inferred = {bool: Bool, float: Float()}
    return {p.name: known.get(p.name, inferred.get(type(p.default))) for p in params
            if p.name not in SET_BY_BUILD and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
