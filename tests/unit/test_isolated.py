"""isolated.call: a function run in a fresh process, its result or why there is none."""

from __future__ import annotations

import os

import pytest

from cryptomon.retention import isolated


def test_the_result_comes_from_another_process():
    assert isolated.call(os.getpid, name="pid") != os.getpid()
    assert isolated.call(sorted, [3, 1, 2], name="sort") == [1, 2, 3]


def test_an_exception_in_the_child_is_raised_here_with_its_traceback():
    with pytest.raises(isolated.ChildFailed, match=r"(?s)Traceback.*ValueError: invalid literal for int"):
        isolated.call(int, "not a number", name="parse")


def test_a_child_that_dies_before_it_answers_is_named_with_its_exit_code():
    with pytest.raises(isolated.ChildDied, match="exit code 3"):
        isolated.call(os._exit, 3, name="dies")
