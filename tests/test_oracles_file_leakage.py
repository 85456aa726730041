"""Image-file leakage between splits (medrobust/data/splits.py, ``check_no_leakage``) on real files
(issue #17): one file listed for two cases in different splits, two files with identical content,
files of equal size but different content (not a leak), the same file twice within one split (not
a leak), container paths with a ``#`` fragment (the fragment is part of the identity), in-memory
cases mixed with file cases, and records whose image is not a list of paths."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medrobust.data.manifests import CaseRecord
from medrobust.data.splits import check_no_leakage
from medrobust.errors import DataError


def _write(path, content: bytes):
    path.write_bytes(content)
    return str(path)


def _case(cid, *files):
    return CaseRecord(case_id=cid, image=list(files))


def test_one_file_for_two_cases_in_two_splits(tmp_path):
    f = _write(tmp_path / "a.nii", b"A" * 64)
    g = _write(tmp_path / "b.nii", b"B" * 32)
    with pytest.raises(DataError, match=r"a\.nii' is listed for case 'x' \(train\) and case 'y' \(test\)"):
        check_no_leakage({"train": [_case("x", f)], "test": [_case("y", g, f)]})
    # the same file reached through another spelling of the path is the same file
    other = str(tmp_path / "sub" / ".." / "a.nii")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="is listed for case 'x'"):
        check_no_leakage({"train": [_case("x", f)], "val": [_case("y", other)]})
    # within one split two cases may share a file (e.g. a shared atlas channel)
    check_no_leakage({"train": [_case("x", f), _case("y", f)], "test": [_case("z", g)]})


def test_identical_content_under_two_names_in_two_splits(tmp_path):
    f = _write(tmp_path / "a.nii", b"same bytes" * 10)
    g = _write(tmp_path / "copy_of_a.nii", b"same bytes" * 10)
    with pytest.raises(DataError, match=r"copy_of_a\.nii' \(case 'y', test\) have identical content"):
        check_no_leakage({"train": [_case("x", f)], "test": [_case("y", g)]})
    # equal size, different content: not a leak (the digest reads the whole file)
    h = _write(tmp_path / "c.nii", b"same bytez" * 10)
    check_no_leakage({"train": [_case("x", f)], "test": [_case("y", h)]})
    # identical copies within one split are not a leak, even with an equal-size file in another split
    check_no_leakage({"train": [_case("x", f), _case("y", g)], "test": [_case("z", h)]})


def test_large_files_are_compared_to_the_end(tmp_path):
    # two 2.5 MiB files that differ only in their last byte: more than one read block each
    base = bytes(range(256)) * (10 * 1024)
    f = _write(tmp_path / "big1.nii", base + b"\x00")
    g = _write(tmp_path / "big2.nii", base + b"\x01")
    check_no_leakage({"train": [_case("x", f)], "test": [_case("y", g)]})
    h = _write(tmp_path / "big3.nii", base + b"\x00")
    with pytest.raises(DataError, match="identical content"):
        check_no_leakage({"train": [_case("x", f)], "test": [_case("y", h)]})


def test_container_fragments_are_part_of_the_identity(tmp_path):
    c = _write(tmp_path / "all.h5", b"container")
    a, b = c + "#img#0", c + "#img#1"
    check_no_leakage({"train": [_case("x", a)], "test": [_case("y", b)]})  # two entries of one container
    with pytest.raises(DataError, match=r"all\.h5#img#0' is listed for case 'x'"):
        check_no_leakage({"train": [_case("x", a)], "test": [_case("y", a)]})
    check_no_leakage({"train": [_case("x", c + "#0")], "test": [_case("y", c + "#1")]})


def test_in_memory_cases_do_not_stop_the_check(tmp_path):
    f = _write(tmp_path / "a.nii", b"A" * 64)
    mem = CaseRecord(case_id="m", image=np.zeros((1, 4, 4), dtype=np.float32))
    with pytest.raises(DataError, match="is listed for case 'x'"):
        check_no_leakage({"train": [mem, _case("x", f)], "test": [_case("y", f)]})
    # in-memory arrays are not files: equal arrays in two splits are not compared
    mem2 = CaseRecord(case_id="n", image=np.zeros((1, 4, 4), dtype=np.float32))
    check_no_leakage({"train": [mem], "test": [mem2]})


def test_records_without_a_list_of_paths_are_skipped():
    # a record whose image is a single string is not a list of channel paths: it is not scanned
    # (character by character it would share '/' and letters with any other path)
    a = CaseRecord(case_id="x", image="/data/one.nii")
    b = CaseRecord(case_id="y", image="/data/two.nii")
    check_no_leakage({"train": [a], "test": [b]})


def test_every_size_group_is_checked(tmp_path):
    # groups are formed by file size in listing order; a group within one split (the small file) or an
    # entry that cannot be read (a directory listed as an image) must not end the search
    small = _write(tmp_path / "small.nii", b"s" * 5)
    f = _write(tmp_path / "a.nii", b"A" * 100)
    g = _write(tmp_path / "copy.nii", b"A" * 100)
    with pytest.raises(DataError, match="identical content"):
        check_no_leakage({"train": [_case("u", small), _case("x", f)], "test": [_case("y", g)]})
    d = tmp_path / "adir"
    d.mkdir()
    n = os.path.getsize(d)
    f2 = _write(tmp_path / "b.nii", b"B" * n)
    g2 = _write(tmp_path / "copy_b.nii", b"B" * n)
    with pytest.raises(DataError, match="identical content"):
        check_no_leakage({"train": [_case("u", str(d)), _case("x", f2)], "test": [_case("y", g2)]})
