"""A policy decision fails closed: no rule checked means refused, with a reason that says so."""

from policies.decision import Decision


def test_a_decision_that_checked_no_rule_refuses():
    decision = Decision("job offered")
    assert not decision.allowed
    assert decision.reasons == ["job offered: no policy rule was evaluated, so nothing is allowed (fail closed)"]
    assert decision.as_details()["allowed"] is False


def test_one_failing_rule_refuses_and_only_failures_are_the_reasons():
    decision = Decision("job offered")
    decision.check("profile", True, "sum is allowed", "none is not allowed")
    decision.check("rounds", False, "within limit", "12 rounds exceed the site's 10")
    assert not decision.allowed
    assert decision.reasons == ["rounds: 12 rounds exceed the site's 10"]


def test_all_rules_passing_allows_and_explains_each():
    decision = Decision("job offered")
    decision.check("profile", True, "sum is allowed", "none is not allowed")
    assert decision.allowed
    assert decision.reasons == ["profile: sum is allowed"]
