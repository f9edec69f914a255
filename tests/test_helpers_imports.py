import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE_IMPORT = re.compile(r"^\s*(from tests\.|import tests\b)", re.MULTILINE)


def test_helpers_are_imported_as_top_level_modules_only() -> None:
    # `tests.scenes` next to `scenes` would load two copies of a helper (and of its state).
    offenders = [
        str(path.relative_to(TESTS))
        for path in sorted(TESTS.rglob("*.py"))
        if PACKAGE_IMPORT.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "import helpers as `from scenes import ...`, not `from tests....`"
