"""Corpora: real text this machine ships, hashed, with a held-out tail never trained on."""

import numpy as np
import pytest

from ffnbench.errors import UsageError
from ffnbench.models import corpus


def test_prose_is_the_standard_library_documentation_and_hashes_stably():
    text = corpus.prose()
    assert text.source == "pydoc_data.topics" and len(text.data) > 100_000
    assert b"The \"if\" statement" in text.data.tobytes()
    assert corpus.prose().sha256 == text.sha256


def test_the_held_out_tail_is_disjoint_and_a_tenth():
    text = corpus.prose()
    train, held_out = text.split()
    assert np.array_equal(np.concatenate([train, held_out]), text.data)
    assert abs(len(held_out) / len(text.data) - corpus.HELD_OUT) < 1e-3


def test_code_is_a_different_real_domain():
    code, prose = corpus.code(), corpus.prose()
    assert b"def " in code.data.tobytes() and code.sha256 != prose.sha256
    assert code.describe()["bytes"] == len(code.data) <= 500_000


def test_an_unknown_domain_is_refused():
    with pytest.raises(UsageError, match="corpus: unknown 'poetry'"):
        corpus.load("poetry")
