"""Token data (resprobe.io.text): documents cut into windows tagged with their document, checked against an
independent cut; every bad input is one clear error."""
from __future__ import annotations

import json

import pytest

from resprobe.io.data import DataError
from resprobe.io.text import byte_tokens, documents, load_text


def test_pydoc_prose_is_windows_of_whole_documents_tagged_with_their_document():
    docs = documents("text:pydoc")
    assert len(docs) > 50 and all(isinstance(t, str) and t for _, t in docs)
    d = load_text("text:pydoc", 64)
    assert d.ids.shape[1] == 65 and len(d.docs) == len(d)
    # an independent cut: each document's bytes in consecutive windows of 65, the remainder dropped
    expect, owners = [], []
    kept = [t for _, t in docs if len(t.encode()) >= 65]
    for k, t in enumerate(kept):
        b = list(t.encode("utf-8"))
        for s in range(0, len(b) - 64, 65):
            if s + 65 <= len(b):
                expect.append(b[s:s + 65])
                owners.append(k)
    assert d.ids.tolist() == expect and d.docs.tolist() == owners
    x, y = d.inputs_and_targets([0, 1])
    assert x.shape == y.shape == (2, 64) and (x[:, 1:] == y[:, :-1]).all()
    assert d.describe()["n_documents"] == len(kept) and d.n_documents == len(set(owners))


def test_a_tokenizer_and_the_vocabulary_check():
    d = load_text("text:pydoc", 16, encode=lambda t: [ord(c) % 50 for c in t], tokenizer="toy", vocabulary=50)
    assert int(d.ids.max()) < 50
    with pytest.raises(DataError, match="embedding holds 100"):
        load_text("text:pydoc", 16, vocabulary=100)     # bytes reach 255


def test_files_folders_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 50)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "y" * 30}) + "\n\n" + json.dumps({"text": "z" * 40}) + "\n")
    d = load_text(f"text:{tmp_path}", 9)
    assert d.names == ["a.txt", "b.jsonl:1", "b.jsonl:3"]
    assert d.docs.tolist() == [0] * 5 + [1] * 3 + [2] * 4
    assert byte_tokens("é") == [195, 169]


BAD = [
    ("empty", lambda p: p.write_bytes(b""), "empty"),
    ("binary", lambda p: p.write_bytes(b"ab\x00cd" * 10), "binary"),
    ("latin-1", lambda p: p.write_bytes("café crème".encode("latin-1") * 10), "UTF-8"),
]


@pytest.mark.parametrize("name,make,words", BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_one_clear_error(tmp_path, name, make, words):
    f = tmp_path / "doc.txt"
    make(f)
    with pytest.raises(DataError, match=words) as e:
        load_text(f"text:{f}", 4)
    assert "\n" not in e.value.one_line()


def test_other_bad_inputs(tmp_path):
    short = tmp_path / "s.txt"
    short.write_text("tiny")
    with pytest.raises(DataError, match="no document holds 65 tokens"):
        load_text(f"text:{short}", 64)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(DataError, match="no 'text' string"):
        load_text(f"text:{bad}", 4)
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="not a JSON line"):
        load_text(f"text:{bad}", 4)
    with pytest.raises(DataError, match="names no file"):
        load_text("text:", 4)
    with pytest.raises(DataError, match="seq-len"):
        load_text("text:pydoc", 0)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no .txt or .jsonl"):
        load_text(f"text:{tmp_path / 'empty_dir'}", 4)
