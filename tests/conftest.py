import os

import pytest
from hypothesis import HealthCheck, settings

# CI keeps property tests quick and deterministic; local runs explore more.
settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=150, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=["generic", "avx2", "avx512", "avx512vnni"])
def each_isa(request):
    """Run the test once per SIMD path (skipping those this CPU lacks)."""
    import hwreg_rs

    name = request.param
    if name not in hwreg_rs.supported_isas():
        pytest.skip(f"this CPU lacks the {name} path")
    previous = hwreg_rs.active_isa()
    hwreg_rs._native._set_isa(name)
    yield name
    hwreg_rs._native._set_isa(previous)
