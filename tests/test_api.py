"""The public API's shape: one error tree, exported everywhere it used to be, typed
parameters, and the Plan value beside the "CUT@BITS/E" strings."""

from __future__ import annotations

import inspect
import typing

import numpy as np
import pytest

import edgesdk
from edgesdk import errors
from edgesdk.models import DIGITS_BUNDLE, load_digits_test


def _exception_classes(module) -> set[type]:
    return {v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, BaseException)
            and v.__module__ == module.__name__}


def test_every_exception_is_in_the_one_tree_and_exported():
    classes = _exception_classes(errors)
    assert {c.__name__ for c in classes} == set(errors.__all__)
    assert set(errors.__all__) <= set(edgesdk.__all__)
    for c in classes:
        assert issubclass(c, errors.EdgeError), c
        assert getattr(edgesdk, c.__name__) is c


def test_no_module_defines_its_own_exception():
    """Exceptions live in edgesdk.errors; other modules only re-export them."""
    import edgesdk.server
    import edgesdk.split
    import edgesdk.transport
    import edgesdk.transport.broker
    import edgesdk.transport.protocol

    for module in (edgesdk.server, edgesdk.split, edgesdk.transport.protocol,
                   edgesdk.transport.broker):
        assert not _exception_classes(module), module
    assert edgesdk.split.SplitError is errors.SplitError
    assert edgesdk.transport.protocol.MalformedMessage is errors.MalformedMessage
    assert edgesdk.transport.protocol.RemoteError is errors.RemoteError
    assert edgesdk.transport.protocol.HandlerError is errors.HandlerError
    assert edgesdk.transport.ServerStartError is errors.ServerStartError
    assert edgesdk.server.ServerStartError is errors.ServerStartError


def test_max_in_flight_below_one_is_a_config_error_naming_the_value():
    with pytest.raises(errors.ConfigError, match="max_in_flight is 0") as exc:
        edgesdk.Engine(DIGITS_BUNDLE, strategy="device", max_in_flight=0)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, errors.EdgeError)


def test_literal_types_match_what_the_engine_accepts():
    from edgesdk.engine import STRATEGIES, Strategy, Task, Where
    from edgesdk.policy import TASKS

    assert set(typing.get_args(Task)) == set(TASKS)
    assert set(typing.get_args(Strategy)) == set(STRATEGIES)
    assert typing.get_args(Where) == ("exit", "edge", "device")
    hints = typing.get_type_hints(edgesdk.Engine.__init__)
    assert hints["task"] == Task
    assert edgesdk.Plan in typing.get_args(hints["strategy"])
    assert typing.get_type_hints(edgesdk.Result)["where"] == Where


@pytest.mark.parametrize("text, plan", [
    ("c1@8", dict(cut="c1", bits=8)),
    ("c1@8/1", dict(cut="c1", bits=8, exits=1)),
    ("c1@8/1+z", dict(cut="c1", bits=8, exits=1, zstd=True)),
    ("input@4-z", dict(cut="input", bits=4, zstd=False)),
])
def test_plan_parses_and_prints_the_string_form(text, plan):
    parsed = edgesdk.Plan.parse(text)
    assert parsed == edgesdk.Plan(**plan)
    assert edgesdk.Plan.parse(str(parsed)) == parsed


@pytest.mark.parametrize("bad", ["c1", "c1@x", "c1@8+z/1+z", "@8"])
def test_a_bad_plan_string_is_a_policy_error(bad):
    with pytest.raises(edgesdk.PolicyError, match="CUT@BITS"):
        edgesdk.Plan.parse(bad)


def test_a_bad_plan_value_is_a_policy_error_naming_it():
    with pytest.raises(edgesdk.PolicyError, match="bits is 0"):
        edgesdk.Plan("c1", 0)
    with pytest.raises(edgesdk.PolicyError, match="exits is -1"):
        edgesdk.Plan("c1", 8, exits=-1)


def test_engine_takes_a_plan_as_it_takes_the_string():
    x, _ = load_digits_test()
    for plan in (edgesdk.Plan("c0", 32, exits=0), edgesdk.Plan("device", exits=1)):
        with edgesdk.Engine(DIGITS_BUNDLE, strategy=plan) as a, \
                edgesdk.Engine(DIGITS_BUNDLE, strategy=str(plan)) as b:
            ra, rb = a.infer(x[0]), b.infer(x[0])
            assert ra.plan == rb.plan and ra.where == rb.where
            np.testing.assert_array_equal(ra.output, rb.output)
    with pytest.raises(edgesdk.PolicyError, match="no candidate cut 'c9'"):
        edgesdk.Engine(DIGITS_BUNDLE, strategy=edgesdk.Plan("c9", 8))


def test_the_lazy_exports_are_visible():
    assert {"Engine", "Plan", "Result"} <= set(dir(edgesdk))
    source = inspect.getsource(edgesdk)
    assert "if TYPE_CHECKING:" in source  # what type checkers read for the lazy names
