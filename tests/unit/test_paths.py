"""Confinement of caller-named paths to the configured roots
(``datamcp.core.paths.confine``): files and symlinks under tmp_path only."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamcp.core import paths
from datamcp.core.paths import PathRefused, confine


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): a root with a nested file, and a secret outside it."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "data.csv").write_text("x\n1\n")
    (root / "top.csv").write_text("x\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("s\n")
    return root, outside


def refused(path: str, roots: list[Path], *, must_exist: bool = True) -> str:
    with pytest.raises(PathRefused) as info:
        confine(path, roots, must_exist=must_exist)
    assert info.value.path == path
    return info.value.kind


def test_a_nested_path_resolves_under_the_root(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    want = (root / "a" / "b" / "data.csv").resolve()
    assert confine("a/b/data.csv", [root], must_exist=True) == want
    assert confine(str(want), [root], must_exist=True) == want  # absolute, inside
    assert confine("a/./b/../b/data.csv", [root], must_exist=True) == want  # .. that stays in


def test_dot_dot_escapes_are_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    for path in ("../outside/secret.csv", "a/../../outside/secret.csv", "a/b/../../../x.csv"):
        assert refused(path, [root]) == paths.OUTSIDE, path
        assert refused(path, [root], must_exist=False) == paths.OUTSIDE, path


def test_absolute_paths_outside_are_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    for path in (str(outside / "secret.csv"), "/etc/passwd", "/", str(root.parent)):
        assert refused(path, [root]) == paths.OUTSIDE, path
    assert refused(str(outside / "new.csv"), [root], must_exist=False) == paths.OUTSIDE


def test_a_symlink_out_of_the_root_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "link.csv").symlink_to(outside / "secret.csv")
    (root / "a" / "dir_link").symlink_to(outside, target_is_directory=True)
    (root / "dangling.csv").symlink_to(outside / "absent.csv")
    assert refused("link.csv", [root]) == paths.OUTSIDE
    assert refused(str(root / "link.csv"), [root]) == paths.OUTSIDE
    assert refused("a/dir_link/secret.csv", [root]) == paths.OUTSIDE
    # A destination cannot be written through a link pointing out either.
    assert refused("dangling.csv", [root], must_exist=False) == paths.OUTSIDE
    assert refused("a/dir_link/new.csv", [root], must_exist=False) == paths.OUTSIDE


def test_a_symlink_inside_the_root_is_followed(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "alias.csv").symlink_to(root / "a" / "b" / "data.csv")
    assert confine("alias.csv", [root], must_exist=True) == (root / "a/b/data.csv").resolve()


def test_a_root_that_is_a_symlink(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, outside = tree
    linked = tmp_path / "linked_root"
    linked.symlink_to(root, target_is_directory=True)
    real = (root / "a" / "b" / "data.csv").resolve()
    assert confine("a/b/data.csv", [linked], must_exist=True) == real
    assert confine(str(linked / "a/b/data.csv"), [linked], must_exist=True) == real
    assert confine(str(real), [linked], must_exist=True) == real  # the real path is inside too
    assert refused("../outside/secret.csv", [linked]) == paths.OUTSIDE
    assert refused(str(outside / "secret.csv"), [linked]) == paths.OUTSIDE


def test_missing_files_and_directories(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert refused("absent.csv", [root]) == paths.NOT_FOUND
    assert refused("a/b", [root]) == paths.NOT_FOUND  # a directory is not a file
    assert refused("a/b", [root], must_exist=False) == paths.DIRECTORY
    # A new file under the first root, parent directories not needed yet.
    new = confine("new/dir/out.csv", [root], must_exist=False)
    assert new == root.resolve() / "new" / "dir" / "out.csv"
    assert confine("top.csv", [root], must_exist=False) == (root / "top.csv").resolve()


def test_relative_paths_try_each_root_in_order(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tree
    second = tmp_path / "second"
    second.mkdir()
    (second / "only.csv").write_text("x\n")
    assert confine("only.csv", [root, second], must_exist=True) == (second / "only.csv").resolve()
    assert confine("new.csv", [root, second], must_exist=False) == root.resolve() / "new.csv"
    assert confine(str(second / "only.csv"), [root, second], must_exist=True).name == "only.csv"


def test_invalid_paths_and_no_roots(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert refused("", [root]) == paths.INVALID
    assert refused("a\x00b.csv", [root]) == paths.INVALID
    # A name too long for the file system (newer Pythons may only find no file).
    assert refused("x" * 5000, [root]) in {paths.UNUSABLE, paths.NOT_FOUND}
    assert refused("top.csv", []) == paths.NO_ROOTS


def test_messages_name_the_path_shortened(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(PathRefused, match=r"'\.\./x\.csv' is outside the data roots"):
        confine("../x.csv", [root], must_exist=True)
    with pytest.raises(PathRefused, match=r"no such file under the data roots"):
        confine("absent.csv", [root], must_exist=True)
    with pytest.raises(PathRefused) as info:
        confine("../" + "y" * 300, [root], must_exist=True)
    assert "(303 characters)" in str(info.value) and len(str(info.value)) < 200
