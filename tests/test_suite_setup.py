"""The suite's own setup (tests/conftest.py): the XLA flags every test process compiles with."""

import os

from conftest import TEST_XLA_FLAGS, xla_accepts


def test_the_suite_uses_the_xla_flags_this_xla_accepts_and_no_others():
  assert not xla_accepts("--xla_no_such_flag_anywhere=1")
  assert xla_accepts("--xla_backend_optimization_level=0")
  in_use = os.environ["XLA_FLAGS"].split()
  assert xla_accepts(" ".join(in_use))
  if "--xla_backend_optimization_level=0" in in_use:        # chosen by conftest, not by hand
    assert [f for f in TEST_XLA_FLAGS if f in in_use] == [f for f in TEST_XLA_FLAGS
                                                          if xla_accepts(f)]
