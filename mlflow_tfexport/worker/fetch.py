"""The validation data of a request (``tfexport.request.data``): only from where the operator allows, bounded.

Anyone who may edit a model version may write ``tfexport.request.data``, so its value is untrusted. The worker
reads it from two kinds of places only:

- the registry's own artifact URIs: ``runs:/<run id>/<path>``, ``models:/<name>/<version or @alias>/<path>``,
  ``mlflow-artifacts:/<path>`` (no host: the tracking server's own artifact proxy), and URIs of the artifact
  store schemes the operator names (``--data-scheme s3``). ``runs:/`` and ``models:/`` are resolved to the
  location they stand for first (a run's artifact root is set by whoever created its experiment), and that
  location must be one of the above too, or a local path under the tracking store's own artifact root;
- local paths (or ``file://``) under a directory the operator allows (``--data-dir``, repeatable; none by
  default), after symlinks and ``..`` are resolved.

Anything else (``http(s)://`` of any host, whose download would carry the worker's
``MLFLOW_TRACKING_TOKEN`` or basic-auth credentials there, other schemes, paths elsewhere) is refused before
anything is fetched, with the same message whether or not the path exists. A download runs in a child process
that is killed when it passes ``max_bytes`` or ``download_timeout_s``; nothing but a single file is accepted.
The result is a :class:`~mlflow_tfexport.validation.data.DataFile`: the export reads it within the
:class:`~mlflow_tfexport.validation.files.ReadLimits`, names it without any path of the worker's machine, and
quotes none of its content in errors.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.validation.data import SUFFIXES, DataFile
from mlflow_tfexport.validation.files import ReadLimits

#: Characters of ``tfexport.request.data`` read at most.
MAX_URI_CHARS = 2000
#: Schemes of the registry itself, always accepted (``runs:/`` and ``models:/`` after resolution).
REGISTRY_SCHEMES = ("runs", "models", "mlflow-artifacts")
#: Schemes never accepted, even if named by ``--data-scheme``: their download sends the tracking credentials.
NEVER = ("http", "https", "file", "ftp", "sftp", "data")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_POLL_S = 0.1


class DataRefused(ExportError):
    """``tfexport.request.data`` names something the worker does not read, or that is outside its bounds."""


@dataclass(frozen=True)
class DataPolicy:
    """Where the worker reads request data from, and within which bounds.

    Attributes:
        data_dirs: Local directories whose files (after symlinks) may be named (``--data-dir``).
        schemes: Extra artifact store schemes accepted, e.g. ``("s3",)`` (``--data-scheme``).
        limits: Bounds on downloading and reading (``--data-max-*``, ``--data-download-timeout``).
    """

    data_dirs: Tuple[str, ...] = ()
    schemes: Tuple[str, ...] = ()
    limits: ReadLimits = field(default_factory=ReadLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dirs", tuple(os.path.realpath(os.path.expanduser(d)) for d in self.data_dirs))
        schemes = tuple(s.lower().rstrip(":/") for s in self.schemes)
        bad = [s for s in schemes if s in NEVER or not _SCHEME.match(s + ":")]
        if bad:
            raise ValueError(f"--data-scheme {', '.join(bad)}: not accepted; name an artifact store scheme such as "
                             f"s3, gs or wasbs (never {', '.join(NEVER)}: their downloads carry the tracking "
                             "credentials to any host)")
        object.__setattr__(self, "schemes", schemes)

    def accepted(self) -> str:
        """What the worker accepts, for messages."""
        schemes = ", ".join(f"{s}:/" for s in REGISTRY_SCHEMES + self.schemes)
        dirs = "a path under a --data-dir of the worker" if self.data_dirs else "no local paths (no --data-dir)"
        return f"{schemes} artifact URIs, or {dirs}"


def _shown(value: str) -> str:
    return repr(value if len(value) <= 200 else value[:197] + "...")


def _under(path: str, roots: Iterable[str]) -> Optional[str]:
    """The root that ``path`` (already resolved) lies under, or None."""
    for root in roots:
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return root
    return None


def _local_path(location: str) -> Optional[str]:
    """The local path a location names (a plain path or ``file:``), or None for a remote URI."""
    match = _SCHEME.match(location)
    if match is None:
        return location
    if match.group(1).lower() == "file":
        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            return None
        return parsed.path
    return None


def _store_roots(client: Any) -> List[str]:
    """The tracking store's own local artifact root (the parent of the Default experiment's location), if local."""
    try:
        location = client.get_experiment("0").artifact_location
    except Exception:  # no Default experiment (deleted, or a store without one): no local root
        return []
    local = _local_path(str(location))
    return [os.path.realpath(os.path.dirname(local.rstrip("/")))] if local else []


def _subpath(rest: str, value: str) -> str:
    parts = [p for p in rest.split("/") if p]
    if any(p in ("..", ".") for p in parts) or not parts:
        raise DataRefused(f"{_shown(value)}: expected a file path inside the artifacts, without '..' or '.'.")
    return "/".join(parts)


def _resolve(value: str, client: Any) -> str:
    """The location a ``runs:/`` or ``models:/`` URI stands for (MLflow's public client calls)."""
    scheme = value.split(":", 1)[0].lower()
    body = value.split(":", 1)[1].lstrip("/")
    if scheme == "runs":
        run_id, _, rest = body.partition("/")
        root = client.get_run(run_id).info.artifact_uri
    else:
        parts = body.split("/")
        name = parts[0]
        if "@" in name:
            name, alias = name.split("@", 1)
            version, rest = str(client.get_model_version_by_alias(name, alias).version), "/".join(parts[1:])
        elif len(parts) >= 2:
            version, rest = parts[1], "/".join(parts[2:])
        else:
            raise DataRefused(f"{_shown(value)}: expected models:/<name>/<version>/<file> or "
                              "models:/<name>@<alias>/<file>")
        root = client.get_model_version_download_uri(name, version)
    return str(root).rstrip("/") + "/" + _subpath(rest, value)


def _check_remote(location: str, value: str, policy: DataPolicy) -> None:
    match = _SCHEME.match(location)
    scheme = match.group(1).lower() if match else ""
    if scheme == "mlflow-artifacts":
        if urlparse(location).netloc:
            raise DataRefused(f"{_shown(value)} names an artifact server by host; the worker reads mlflow-artifacts:/ "
                              "URIs only from its own tracking server (no host). Accepted: " + policy.accepted() + ".")
        return
    if scheme in policy.schemes:
        return
    raise DataRefused(f"{_shown(value)} is not a location the worker reads data from. Accepted: "
                      f"{policy.accepted()}. Log the file as a run artifact and give runs:/<run id>/<file>.")


def _check_file(path: str, value: str, roots: Sequence[str], policy: DataPolicy) -> Tuple[str, str]:
    """The resolved path and its name relative to its root; the same refusal whether or not it exists."""
    real = os.path.realpath(path)
    root = _under(real, roots) if os.path.isabs(path) else None
    if root is None:
        raise DataRefused(f"{_shown(value)} is not under a directory the worker reads data from. Accepted: "
                          f"{policy.accepted()}. Ask the worker's operator for a --data-dir, or log the file as a "
                          "run artifact and give runs:/<run id>/<file>.")
    relative = os.path.relpath(real, root)
    if not os.path.isfile(real):
        raise DataRefused(f"{_shown(value)}: no such file in the worker's data directory (a directory or a missing "
                          f"file); expected one {', '.join(SUFFIXES)} file.")
    return real, relative


def _suffix_ok(name: str, value: str) -> None:
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in SUFFIXES:
        raise DataRefused(f"{_shown(value)}: unknown suffix {suffix[:16] or '(none)'!r}; expected one of "
                          f"{', '.join(SUFFIXES)}.")


def request_data(value: Optional[str], client: Any, policy: DataPolicy, scratch: str) -> Optional[DataFile]:
    """The validation data a request names, checked and (for an artifact URI) downloaded into ``scratch``.

    Returns None when ``value`` is empty. Raises :class:`DataRefused` for anything not accepted (nothing is
    fetched then) or out of bounds.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > MAX_URI_CHARS or any(ord(c) < 32 for c in value):
        raise DataRefused(f"the value ({len(value)} characters) is not a URI or path: expected at most "
                          f"{MAX_URI_CHARS} printable characters, e.g. runs:/<run id>/data.csv.")
    match = _SCHEME.match(value)
    scheme = match.group(1).lower() if match and len(match.group(1)) > 1 else ""  # "C:" is no scheme
    if scheme in ("runs", "models"):
        location = _resolve(value, client)
    elif scheme == "file" or not scheme:
        location = value
    else:
        _check_remote(value, value, policy)
        location = value
    local = _local_path(location)
    if local is not None:
        roots = list(policy.data_dirs) + (_store_roots(client) if scheme in ("runs", "models") else [])
        real, relative = _check_file(local, value, roots, policy)
        _suffix_ok(real, value)
        if scheme in ("runs", "models"):
            return DataFile(real, value, policy.limits, source=value)
        return DataFile(real, relative, policy.limits)  # never the worker's path: its name in the data directory
    _check_remote(location, value, policy)
    _suffix_ok(urlparse(location).path, value)
    tracking_uri = getattr(client, "tracking_uri", None)
    path = download(location, scratch, policy.limits, value, tracking_uri=tracking_uri)
    return DataFile(path, value, policy.limits, source=value)


_CHILD = (
    "import sys\n"
    "from mlflow.artifacts import download_artifacts\n"
    "print(download_artifacts(artifact_uri=sys.argv[1], dst_path=sys.argv[2]))\n"
)


def _size(folder: str) -> int:
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def download(location: str, scratch: str, limits: ReadLimits, value: str, *,
             tracking_uri: Optional[str] = None) -> str:
    """Download one artifact into ``scratch`` in a child process, killed past ``max_bytes`` or the timeout.

    ``tracking_uri`` (default: this process's) resolves ``mlflow-artifacts:/`` URIs in the child.
    """
    import mlflow

    dst = os.path.join(scratch, "download")
    os.makedirs(dst, exist_ok=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=str(tracking_uri or mlflow.get_tracking_uri()),
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    log = os.path.join(scratch, "download.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, location, dst], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + limits.download_timeout_s
    why = ""
    while proc.poll() is None:
        if time.monotonic() > deadline:
            why = f"the download took more than {limits.download_timeout_s:g} s (--data-download-timeout)"
        elif _size(dst) > limits.max_bytes:
            why = f"the download passed {limits.max_bytes} bytes (--data-max-bytes)"
        if why:
            _kill(proc)
            raise DataRefused(f"{_shown(value)}: {why}; nothing was read.")
        time.sleep(_POLL_S)
    if proc.returncode != 0:
        with open(log, "rb") as f:
            lines = [line for line in f.read()[-4000:].decode("utf-8", "replace").splitlines() if line.strip()]
        last = lines[-1][:300] if lines else f"exit status {proc.returncode}"
        raise DataRefused(f"{_shown(value)} cannot be downloaded: {last}")
    if _size(dst) > limits.max_bytes:
        raise DataRefused(f"{_shown(value)}: the download passed {limits.max_bytes} bytes (--data-max-bytes).")
    with open(log, "rb") as f:
        printed = f.read()[-4000:].decode("utf-8", "replace").strip().splitlines()
    path = os.path.realpath(printed[-1]) if printed else ""
    if not path.startswith(os.path.realpath(dst) + os.sep) or not os.path.isfile(path) or os.path.islink(path):
        raise DataRefused(f"{_shown(value)} names a directory of artifacts (or nothing); expected one "
                          f"{', '.join(SUFFIXES)} file.")
    return path


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
