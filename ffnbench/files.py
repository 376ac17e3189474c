"""Files: atomic writes (stage under a temporary name, then rename) and content hashes."""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `out_dir`; on success move its files into `out_dir`.

    On any exception the staging folder is removed and `out_dir` is left as it was, so a failed
    export or quantization leaves nothing half-written.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        yield stage
        out_dir.mkdir(exist_ok=True)
        # Manifests last: a manifest present means its artifact is complete.
        names = sorted(p.name for p in stage.iterdir())
        for name in sorted(names, key=lambda n: n.endswith("manifest.json")):
            os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest(obj: object) -> str:
    """A short content key for a JSON-able identity (what an artifact was made from)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """The user's cache for ffnbench (measured peaks, whole-model exports): $XDG_CACHE_HOME/ffnbench."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ffnbench"


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the user cache's lock for `name` (an exclusive flock): a second process making the same
    entry (a shard beside this one, a test worker) waits, then finds it made. Without a writable
    cache it locks nothing: the work is only done twice."""
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        handle = open(cache_dir() / f".{name}.lock", "w")  # noqa: SIM115 - closed below, after the lock
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a file system without locks (NFS without lockd): go on unlocked
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def locate(written: str | Path, base: str | Path, sha256: str | None = None) -> Path:
    """A file a config or manifest names: its path from `base` (a relative path; an absolute one as
    it is), or a file of the same name directly in `base` (a run copied elsewhere, --weights-dir).
    With `sha256`, the first of those whose content matches; otherwise the first that exists."""
    path = Path(written)
    candidates = [path if path.is_absolute() else Path(base) / path, Path(base) / path.name]
    existing = [c for c in candidates if c.is_file()]
    if sha256:
        existing = [c for c in existing if sha256_file(c) == sha256] or existing
    return existing[0] if existing else candidates[0]


def recorded_path(written: str | Path) -> str:
    """How a run records a file's path: as the config wrote it if relative (to the config's folder),
    its name only if absolute (a path of this machine; elsewhere it is found by name and hash)."""
    return Path(written).name if Path(written).is_absolute() else str(written)
