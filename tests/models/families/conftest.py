"""Parametrize the conformance suite's ``case`` argument with the test class's ``configs``."""


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames and metafunc.cls is not None:
        cases = list(getattr(metafunc.cls, "configs", {}))
        metafunc.parametrize("case", cases, ids=cases)
