"""Class names (issue 18 point 7, issue 19 points 2 and 16): labels files and the classes a
user names, without running a model."""
import pytest

from preddiff.errors import InvalidArgument
from preddiff.labels import read_labels, resolve_classes, split_classes

IMAGENET = read_labels("imagenet")


def resolve(items, names=IMAGENET):
    return resolve_classes(items, names, len(names), labelled=True)


def test_names_match_exactly_then_case_insensitively():
    assert resolve("tiger cat") == [282]
    assert resolve("Tiger  CAT") == [282]
    assert resolve("Cardigan") == [264] and resolve("cardigan") == [474]  # exact case wins
    with pytest.raises(InvalidArgument, match=r"'CARDIGAN' is ambiguous: classes 264 "
                                              r"\(Cardigan\), 474 \(cardigan\)"):
        resolve("CARDIGAN")
    assert resolve([281, "tiger cat", "281"]) == [281, 282]


def test_ambiguous_names_list_their_indices():
    with pytest.raises(InvalidArgument, match=r"'crane' is ambiguous: classes 134 \(crane\), "
                                              r"517 \(crane\)"):
        resolve("crane")
    with pytest.raises(InvalidArgument, match=r"638 \(maillot\), 639 \(maillot\)"):
        resolve("maillot,281")


def test_unknown_names_get_suggestions():
    with pytest.raises(InvalidArgument, match=r"unknown class 'cat'; did you mean 'tiger cat', "
                                              r"'Persian cat', 'Siamese cat', 'Egyptian cat'"):
        resolve("cat")
    with pytest.raises(InvalidArgument, match=r"did you mean 'tabby'"):
        resolve("tabbby")
    with pytest.raises(InvalidArgument, match="names need labels"):
        resolve_classes("cat", ["class 0", "class 1"], 2, labelled=False)


def test_commas_in_names_are_quoted():
    names = ["ant", "bee, honey", "cat"]
    assert split_classes('ant,"bee, honey"') == ["ant", "bee, honey"]
    assert resolve('"bee, honey",0', names) == [1, 0]
    assert resolve("bee, honey", names) == [1]  # the whole text is one name
    with pytest.raises(InvalidArgument, match="unknown class 'bee'"):
        resolve("bee,cat", names)


def test_labels_file_rules(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("ant\r\n  bee \r\ncat\r\n\r\n\r\n".encode("utf-8-sig"))
    assert read_labels(path) == ["ant", "bee", "cat"]  # BOM, spaces, CRLF, trailing blanks
    path.write_text("ant\n\nbee\n\ncat\n")
    with pytest.raises(InvalidArgument, match="lines 2, 4 are blank; every line names"):
        read_labels(path)
    path.write_text("\n\n")
    with pytest.raises(InvalidArgument, match="is empty"):
        read_labels(path)
