"""Real text this machine already ships, read at run time and hashed: prose to train on, code as a
second domain (a natural drift). Nothing is downloaded or generated."""

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ffnbench.errors import UsageError

if TYPE_CHECKING:
    from ffnbench.models.library import DocumentCorpus

HELD_OUT = 0.1  # the last tenth of each domain is never trained on
VALIDATION = 0.05  # the 5 % before it choose training settings; the held-out tenth only tests


@dataclass(frozen=True)
class Corpus:
    name: str
    source: str  # where the text came from, for the manifest
    data: np.ndarray  # uint8 bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data.tobytes()).hexdigest()

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, held-out): the held-out part is the last HELD_OUT of the bytes."""
        cut = int(len(self.data) * (1 - HELD_OUT))
        return self.data[:cut], self.data[cut:]

    def split_validation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, validation, held-out): validation is the VALIDATION of the bytes just before the
        held-out part, so choosing a setting on it never looks at the test bytes."""
        train, held_out = self.split()
        cut = len(train) - int(len(self.data) * VALIDATION)
        return train[:cut], train[cut:], held_out

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "bytes": int(len(self.data)), "sha256": self.sha256,
                "held_out": HELD_OUT}


def prose() -> Corpus:
    """The standard library's documentation topics (`pydoc_data.topics`), in key order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise UsageError(f"corpus prose: this Python ships no pydoc_data ({e}); use a full CPython install") from e
    text = "".join(topics[key] for key in sorted(topics))
    return Corpus("prose", "pydoc_data.topics", np.frombuffer(text.encode("utf-8"), np.uint8))


def code(limit: int = 500_000) -> Corpus:
    """The standard library's own top-level Python sources, in name order, up to `limit` bytes."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(stdlib.glob("*.py"))
    if not sources:
        raise UsageError(f"corpus code: no standard-library sources under {stdlib}; use a full CPython install")
    blob = b"".join(path.read_bytes() for path in sources)[:limit]
    return Corpus("code", f"stdlib *.py under {stdlib.name}", np.frombuffer(blob, np.uint8))


def chat() -> Corpus:
    """The prose topics as a chat: each a user's question and the topic as the assistant's answer, in
    ChatML turns (<|im_start|>ROLE … <|im_end|>, the format of SmolLM2 and Qwen2), so that a model sees
    its chat markup around real text."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise UsageError(f"corpus chat: this Python ships no pydoc_data ({e}); use a full CPython install") from e
    turns = (f"<|im_start|>user\nWhat does the Python documentation say about {key.replace('-', ' ')}?<|im_end|>\n"
             f"<|im_start|>assistant\n{topics[key].strip()}<|im_end|>\n" for key in sorted(topics))
    text = "".join(turns)
    return Corpus("chat", "pydoc_data.topics in ChatML turns", np.frombuffer(text.encode("utf-8"), np.uint8))


def library() -> "DocumentCorpus":
    """The larger prose corpus, split by document (models/library.py)."""
    from ffnbench.models.library import library as load_library

    return load_library()


DOMAINS = {"prose": prose, "code": code, "chat": chat, "library": library}


def load(name: str) -> Corpus:
    if name not in DOMAINS:
        raise UsageError(f"corpus: unknown '{name}'; choose one of {', '.join(DOMAINS)}")
    return DOMAINS[name]()
