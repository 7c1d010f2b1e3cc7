"""The registry side: registered versions and their lookups (``versions``), alias promotion under a policy
(``policy``), the history of alias changes (``history``) and the signatures that make the guard's records
its own (``attest``). The worker's alias guard uses these; the names of ``versions`` are re-exported here.
"""

from mlflow_tfexport.registry.versions import (
    ModelsUri,
    check_model_name,
    clear_refusal,
    ensure_registered_model,
    find_by_export_key,
    history_rows,
    move_alias,
    name_filter,
    parse_models_uri,
    promote,
    register_version,
    resolve_version,
    rollback,
    set_version_tags,
    settle_duplicates,
    variant_rows,
    versions_of,
)

__all__ = [
    "ModelsUri",
    "check_model_name",
    "clear_refusal",
    "ensure_registered_model",
    "find_by_export_key",
    "history_rows",
    "move_alias",
    "name_filter",
    "parse_models_uri",
    "promote",
    "register_version",
    "resolve_version",
    "rollback",
    "set_version_tags",
    "settle_duplicates",
    "variant_rows",
    "versions_of",
]
