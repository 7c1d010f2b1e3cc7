"""The promotion policy of a registered model: which aliases are guarded and what a version needs to hold one.

The policy lives in registered model tags, one tag per setting, so that it reads and edits in the registry UI
like any other tag (one value per row, no JSON to get right in a text box):

==========================================  =============================  ====================================
tag                                         default                        meaning
==========================================  =============================  ====================================
``tfexport.policy.guarded``                 ``production``                 the guarded aliases, comma-separated
                                                                           (``none``: no alias is guarded)
``tfexport.policy.<alias>.formats``         ``any``                        formats the alias may point to,
                                                                           e.g. ``onnx,torchscript``
``tfexport.policy.<alias>.validation``      ``passed``                     ``passed``: an exported variant needs
                                                                           ``tfexport.validation=passed``;
                                                                           ``any``: not checked
``tfexport.policy.<alias>.real_data``       ``false``                      ``true``: validated on real rows
                                                                           (``tfexport.data_rows`` > 0)
``tfexport.policy.<alias>.min_agreement``   ``none``                       the least ``tfexport.agreement``
                                                                           (0..1) of that validation
``tfexport.policy.<alias>.same_task``       ``true``                       the task and label set must be those
                                                                           of the version it replaces
``tfexport.policy.<alias>.attested``        ``false``                      ``true``: the validation tags must
                                                                           carry a signature by a holder of the
                                                                           worker's secret (``attest.py``)
``tfexport.policy.<alias>.required``        ``false``                      ``true``: the guard puts the alias
                                                                           back when a user deletes it
==========================================  =============================  ====================================

The source version (``tfexport.format=transformers``) is the reference exports are validated against: the
validation settings do not apply to it (its formats and task still do). ``evaluate`` turns a policy, the
candidate version and the version it replaces into a ``Decision`` with every reason; ``promote``, ``rollback``
and the worker's alias guard all decide through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from mlflow_tfexport.constants import FLAVOR_NAME, VALIDATION_PASSED, FlavorKey, Format, Tag
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.registry.attest import Signer, resolve, validation_state

DEFAULT_GUARDED: Tuple[str, ...] = ("production",)
GUARDED = "guarded"
ANY = "any"
NONE = "none"
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")
_ALIAS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
#: Formats an alias may be restricted to (the values of the ``tfexport.format`` tag).
KNOWN_FORMATS: Tuple[str, ...] = (Format.TRANSFORMERS, Format.ONNX, Format.TORCHSCRIPT, Format.NEURON)


class PolicyError(TfexportError):
    """A policy setting that cannot be read: what was received, what is expected."""


@dataclass(frozen=True)
class AliasRule:
    """What a version needs to hold one guarded alias."""

    formats: Optional[FrozenSet[str]] = None  # None: any format
    validation: bool = True  # an exported variant needs tfexport.validation=passed
    real_data: bool = False  # ... on real rows (tfexport.data_rows > 0)
    min_agreement: Optional[float] = None  # ... with at least this tfexport.agreement
    same_task: bool = True  # task and label set of the version it replaces
    attested: bool = False  # the validation tags signed by a holder of the worker's secret
    required: bool = False  # a deletion of the alias is undone (back to the accepted version)


def _bool(value: str, key: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise PolicyError(f"{key}: expected true or false, received {value!r}.")


def _formats(value: str, key: str) -> Optional[FrozenSet[str]]:
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    if not items or items == [ANY]:
        return None
    unknown = [v for v in items if v not in KNOWN_FORMATS]
    if unknown:
        raise PolicyError(f"{key}: unknown format {', '.join(map(repr, unknown))}; expected {ANY!r} or a "
                          f"comma-separated list of {', '.join(KNOWN_FORMATS)}, e.g. 'onnx,torchscript'.")
    return frozenset(items)


def _validation(value: str, key: str) -> bool:
    text = value.strip().lower()
    if text in (VALIDATION_PASSED, ANY):
        return text == VALIDATION_PASSED
    raise PolicyError(f"{key}: expected {VALIDATION_PASSED!r} or {ANY!r}, received {value!r}.")


def _agreement(value: str, key: str) -> Optional[float]:
    text = value.strip().lower()
    if text in (NONE, ""):
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise PolicyError(f"{key}: expected a number from 0 to 1 (e.g. 0.99) or {NONE!r}, received {value!r}.")
    return number


#: setting -> (reader of its tag value, AliasRule field, help)
SETTINGS: Dict[str, Tuple[Callable[[str, str], Any], str, str]] = {
    "formats": (_formats, "formats", "formats the alias may point to: 'any' or e.g. 'onnx,torchscript'"),
    "validation": (_validation, "validation", "'passed': an exported variant's validation must have passed; 'any'"),
    "real_data": (_bool, "real_data", "true: that validation ran on real rows (not synthetic inputs only)"),
    "min_agreement": (_agreement, "min_agreement", "the least agreement with the source on those rows, 0..1, "
                      "or 'none'"),
    "same_task": (_bool, "same_task", "true: the task and label set of the version it replaces"),
    "attested": (_bool, "attested", "true: the validation tags carry a signature by a holder of the worker's "
                 "secret (an export run by the worker, or with its secret set)"),
    "required": (_bool, "required", "true: a deletion of the alias is undone by the worker's guard"),
}


def _show(rule: AliasRule, setting: str) -> str:
    value = getattr(rule, SETTINGS[setting][1])
    if setting == "formats":
        return ANY if value is None else ",".join(sorted(value))
    if setting == "validation":
        return VALIDATION_PASSED if value else ANY
    if setting == "min_agreement":
        return NONE if value is None else f"{value:g}"
    return "true" if value else "false"


def _aliases(value: str, key: str) -> Tuple[str, ...]:
    if value.strip().lower() == NONE:
        return ()
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [a for a in items if not set(a) <= _ALIAS_CHARS]
    if bad:
        raise PolicyError(f"{key}: {', '.join(map(repr, bad))} is not an alias name (letters, digits, '_' and "
                          "'-' only); expected a comma-separated list, e.g. 'production,staging'.")
    return items


@dataclass(frozen=True)
class Policy:
    """A registered model's promotion policy, as read from its tags (``read_policy``)."""

    guarded: Tuple[str, ...] = DEFAULT_GUARDED
    rules: Mapping[str, AliasRule] = field(default_factory=dict)
    #: Settings that could not be read: a guarded alias with one refuses every promotion until it is fixed.
    errors: Tuple[str, ...] = ()
    #: Settings for aliases that are not guarded (kept, but without effect).
    unused: Tuple[str, ...] = ()
    #: Whether any policy tag is set (otherwise the defaults apply).
    explicit: bool = False

    def rule(self, alias: str) -> Optional[AliasRule]:
        """The rule of a guarded alias; None when the alias is not guarded."""
        if alias not in self.guarded:
            return None
        return self.rules.get(alias, AliasRule())

    def rows(self) -> List[Tuple[str, str, str]]:
        """(setting, value, tag) for every setting in effect, defaults included."""
        rows = [(GUARDED, ",".join(self.guarded) or NONE, Tag.POLICY_PREFIX + GUARDED)]
        for alias in self.guarded:
            rule = self.rule(alias) or AliasRule()
            rows += [(f"{alias}.{s}", _show(rule, s), f"{Tag.POLICY_PREFIX}{alias}.{s}") for s in SETTINGS]
        return rows

    def to_text(self) -> str:
        lines = [f"  {setting} = {value}" for setting, value, _ in self.rows()]
        if not self.explicit:
            lines.insert(0, "  (no tfexport.policy.* tags: the defaults apply)")
        lines += [f"  ignored: {u} (alias not guarded)" for u in self.unused]
        lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines)


def read_policy(model_tags: Mapping[str, str]) -> Policy:
    """The policy in a registered model's tags; settings it cannot read are listed in ``errors``."""
    errors: List[str] = []
    guarded = DEFAULT_GUARDED
    found = {k[len(Tag.POLICY_PREFIX):]: v for k, v in (model_tags or {}).items() if k.startswith(Tag.POLICY_PREFIX)}
    if GUARDED in found:
        try:
            guarded = _aliases(found[GUARDED], Tag.POLICY_PREFIX + GUARDED)
        except PolicyError as exc:
            errors.append(exc.message)
    values: Dict[str, Dict[str, Any]] = {}
    unused: List[str] = []
    for key, value in sorted(found.items()):
        if key == GUARDED:
            continue
        alias, _, setting = key.rpartition(".")
        tag = Tag.POLICY_PREFIX + key
        if not alias or setting not in SETTINGS:
            errors.append(f"{tag}: unknown setting; expected {Tag.POLICY_PREFIX}{GUARDED} or "
                          f"{Tag.POLICY_PREFIX}<alias>.<{'|'.join(SETTINGS)}>.")
            continue
        if alias not in guarded:
            unused.append(tag)
            continue
        reader, attr, _ = SETTINGS[setting]
        try:
            values.setdefault(alias, {})[attr] = reader(value, tag)
        except PolicyError as exc:
            errors.append(exc.message)
    rules = {alias: replace(AliasRule(), **kw) for alias, kw in values.items()}
    return Policy(guarded, rules, tuple(errors), tuple(unused), explicit=bool(found))


def parse_assignments(assignments: Sequence[str], current: Mapping[str, str]) -> Dict[str, Optional[str]]:
    """``["guarded=production,staging", "production.formats=onnx", "production.min_agreement="]`` -> the tags
    to set (None: delete, back to the default). The policy they give, with ``current`` (the model's tags), must
    read without errors."""
    changes: Dict[str, Optional[str]] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        key = key.strip()
        if key.startswith(Tag.POLICY_PREFIX):
            key = key[len(Tag.POLICY_PREFIX):]
        if not sep or not key:
            raise PolicyError(f"--set {text!r}: expected KEY=VALUE, e.g. production.formats=onnx (an empty VALUE "
                              "restores the default).")
        alias, _, setting = key.rpartition(".")
        if key != GUARDED and (not alias or setting not in SETTINGS):
            raise PolicyError(
                f"--set {text!r}: unknown setting {key!r}; expected {GUARDED} or <alias>.<setting> with setting one "
                "of: " + "; ".join(f"{s} ({h})" for s, (_, _, h) in SETTINGS.items()) + "."
            )
        changes[Tag.POLICY_PREFIX + key] = value.strip() or None
    merged = {k: v for k, v in {**current, **changes}.items() if v is not None}
    policy = read_policy(merged)
    new_errors = [e for e in policy.errors if any(e.startswith(k) for k in changes)]
    if new_errors:
        raise PolicyError("; ".join(new_errors))
    unused = [u for u in policy.unused if u in changes]
    if unused:
        aliases = sorted({u[len(Tag.POLICY_PREFIX):].rpartition(".")[0] for u in unused})
        raise PolicyError(
            f"{', '.join(unused)}: {', '.join(aliases)} is not a guarded alias (guarded: "
            f"{','.join(policy.guarded) or NONE}); guard it too: --set {GUARDED}="
            f"{','.join((*policy.guarded, *aliases))}."
        )
    return changes


@dataclass(frozen=True)
class VersionFacts:
    """What the policy reads of one model version: its tags, and its label set when asked for."""

    version: str
    tags: Mapping[str, str]
    labels: Optional[FrozenSet[str]] = None
    #: Why the labels could not be read (the MLmodel could not be downloaded): a guarded alias refuses then.
    unreadable: Optional[str] = None
    #: ``attest.validation_state`` of its validation tags: "signed", "unsigned", "mismatch" or "unverifiable".
    signature: str = "unsigned"

    @property
    def format(self) -> Optional[str]:
        return self.tags.get(Tag.FORMAT)


def read_labels(name: str, version: str) -> Optional[FrozenSet[str]]:
    """The label names in the version's MLmodel (``id2label``); None for a model without labels."""
    model = Model.load(f"models:/{name}/{version}")
    labels = (model.flavors.get(FLAVOR_NAME) or {}).get(FlavorKey.ID2LABEL)
    return frozenset(str(v) for v in labels.values()) if isinstance(labels, dict) and labels else None


def version_facts(client: Any, name: str, version: str, *, labels: bool = False,
                  signer: Optional[Signer] = None) -> VersionFacts:
    mv = client.get_model_version(name, str(version))
    tags = dict(mv.tags or {})
    signature = validation_state(resolve(signer), name, str(mv.version), tags)
    if not (labels and tags.get(Tag.FORMAT)):
        return VersionFacts(str(mv.version), tags, signature=signature)
    try:
        return VersionFacts(str(mv.version), tags, read_labels(name, str(version)), signature=signature)
    except Exception as exc:  # any failure to read the MLmodel: decided as a refusal, not a crash
        return VersionFacts(str(mv.version), tags, unreadable=f"{type(exc).__name__}: {exc}"[:300],
                            signature=signature)


@dataclass(frozen=True)
class Decision:
    """The outcome of ``evaluate``: whether ``alias`` may point at ``version``, and every reason it may not."""

    alias: str
    version: str
    previous: Optional[str]
    allowed: bool
    reasons: Tuple[str, ...] = ()
    guarded: bool = True

    @property
    def reason(self) -> str:
        if self.allowed:
            return "policy satisfied" if self.guarded else f"@{self.alias} is not guarded"
        return "; ".join(self.reasons)


def last_validation(tags: Mapping[str, str]) -> str:
    """The last recorded check on real data, as a clause (e.g. " (label_agreement 0.5000, >= 1 required, on
    332 rows from file reviews.csv)"), or "" when none is recorded."""
    metric = tags.get(Tag.AGREEMENT_METRIC)
    if not metric:
        return ""
    return (f" ({metric} {tags.get(Tag.AGREEMENT, '?')}, >= {tags.get(Tag.AGREEMENT_THRESHOLD, '?')} required, "
            f"on {tags.get(Tag.DATA_ROWS, '?')} rows from {tags.get(Tag.DATA_ORIGIN, '?')})")


def _validation_reasons(rule: AliasRule, tags: Mapping[str, str]) -> List[str]:
    reasons = []
    if rule.validation and tags.get(Tag.VALIDATION) != VALIDATION_PASSED:
        reasons.append(f"its validation is {tags.get(Tag.VALIDATION, 'missing')!r}, not {VALIDATION_PASSED!r}"
                       f"{last_validation(tags)}")
    rows = tags.get(Tag.DATA_ROWS, "")
    if rule.real_data and not (rows.isdigit() and int(rows) > 0):
        reasons.append(f"it was not validated on real data ({Tag.DATA_ROWS} is {rows or 'missing'!r}, "
                       f"{tags.get(Tag.DATA_ORIGIN, 'no data origin')}); the policy asks for real rows "
                       "(mlflow-tfexport validate --data FILE --tag)")
    if rule.min_agreement is not None:
        try:
            agreement = float(tags.get(Tag.AGREEMENT, "nan"))
        except ValueError:
            agreement = math.nan
        if not agreement >= rule.min_agreement:
            reasons.append(f"its agreement is {tags.get(Tag.AGREEMENT, 'missing')} "
                           f"({tags.get(Tag.AGREEMENT_METRIC, 'no metric')}), below the policy's "
                           f"min_agreement {rule.min_agreement:g}")
    return reasons


def _signature_reasons(rule: AliasRule, candidate: VersionFacts) -> List[str]:
    """``attested``: the validation tags must match a signature by a holder of the worker's secret."""
    if rule.attested and candidate.signature != "signed":
        why = {"unverifiable": "the guard has no secret to check it with",
               "mismatch": f"its validation tags do not match their signature ({Tag.ATTESTATION}): they were "
                           "edited after they were signed, or the signature was copied from another version",
               }.get(candidate.signature, f"it has no {Tag.ATTESTATION}")
        return [f"its validation is not signed by the worker ({why}); the policy asks for attested=true: export "
                "it through the worker (tfexport.request), or with the worker's secret set"]
    return []


def _match_reasons(candidate: VersionFacts, replaced: VersionFacts) -> List[str]:
    """Why ``candidate`` does not do the task of ``replaced`` with the same labels (empty: it does)."""
    task, before = candidate.tags.get(Tag.TASK), replaced.tags.get(Tag.TASK)
    if before is not None and task != before:
        return [f"its task is {task!r}, not {before!r} like version {replaced.version} it replaces"]
    unreadable = [f"version {f.version}: {f.unreadable}" for f in (candidate, replaced) if f.unreadable]
    if unreadable:
        return [f"the label sets could not be compared ({'; '.join(unreadable)})"]
    if replaced.labels != candidate.labels and replaced.format and candidate.format:
        return [f"its labels {sorted(candidate.labels or ())} differ from {sorted(replaced.labels or ())} of "
                f"version {replaced.version} it replaces"]
    return []


def evaluate(policy: Policy, alias: str, candidate: VersionFacts, replaced: Optional[VersionFacts]) -> Decision:
    """Whether ``alias`` may move from ``replaced`` (None: it pointed nowhere) to ``candidate``."""
    previous = replaced.version if replaced is not None else None
    rule = policy.rule(alias)
    if rule is None:
        return Decision(alias, candidate.version, previous, True, guarded=False)
    if policy.errors:
        return Decision(alias, candidate.version, previous, False,
                        (f"the promotion policy cannot be read ({'; '.join(policy.errors)})",))
    tags = candidate.tags
    fmt = candidate.format
    reasons: List[str] = []
    if fmt is None:
        reasons.append(f"it is not a tfexport version (no {Tag.FORMAT} tag)")
    else:
        if rule.formats is not None and fmt not in rule.formats:
            reasons.append(f"its format is {fmt!r}; the policy allows {','.join(sorted(rule.formats))} for @{alias}")
        if fmt != Format.TRANSFORMERS:
            reasons += _validation_reasons(rule, tags)
            reasons += _signature_reasons(rule, candidate)
    if rule.same_task and replaced is not None and replaced.version != candidate.version:
        reasons += _match_reasons(candidate, replaced)
    return Decision(alias, candidate.version, previous, not reasons, tuple(reasons))


def needs_labels(policy: Policy, alias: str) -> bool:
    """Whether ``evaluate`` compares label sets for this alias (reading them downloads each MLmodel)."""
    rule = policy.rule(alias)
    return rule is not None and rule.same_task and not policy.errors


def _facts_or_none(client: Any, name: str, version: Optional[str], labels: bool,
                   signer: Optional[Signer] = None) -> Optional[VersionFacts]:
    if version is None:
        return None
    try:
        return version_facts(client, name, version, labels=labels, signer=signer)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # the replaced version was deleted since
            return None
        raise


def decide(client: Any, name: str, alias: str, version: str, previous: Optional[str], *,
           signer: Optional[Signer] = None, model_tags: Optional[Mapping[str, str]] = None) -> Decision:
    """Read the policy (from ``model_tags`` when given) and both versions from the registry, and ``evaluate``."""
    tags = model_tags if model_tags is not None else (client.get_registered_model(name).tags or {})
    policy = read_policy(tags)
    signer = resolve(signer)
    labels = needs_labels(policy, alias) and previous is not None and str(previous) != str(version)
    candidate = version_facts(client, name, str(version), labels=labels, signer=signer)
    replaced = _facts_or_none(client, name, previous, labels, signer)
    decision = evaluate(policy, alias, candidate, replaced)
    return replace(decision, previous=previous)


def get_policy(name: str, client: Any = None) -> Policy:
    """The promotion policy of the registered model ``name`` (defaults included)."""
    client = client or MlflowClient()
    return read_policy(client.get_registered_model(name).tags or {})


def set_policy(name: str, assignments: Sequence[str], client: Any = None) -> Policy:
    """Check ``assignments`` (``KEY=VALUE``; see ``parse_assignments``) and write them as tags of ``name``; an
    empty value deletes the tag. Nothing is written when one of them is wrong. Returns the policy now in force.

    Example:
        >>> set_policy("sentiment", ["production.formats=onnx", "production.real_data=true"])
    """
    client = client or MlflowClient()
    tags = dict(client.get_registered_model(name).tags or {})
    for key, value in parse_assignments(assignments, tags).items():
        if value is None:
            if key in tags:
                client.delete_registered_model_tag(name, key)
            tags.pop(key, None)
        else:
            client.set_registered_model_tag(name, key, value)
            tags[key] = value
    return read_policy(tags)
