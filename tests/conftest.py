from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real faces); tests using it skip where it is absent."""
    if not (SHARED / "README.md").is_file():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED
