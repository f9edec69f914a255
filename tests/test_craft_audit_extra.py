import sys
from pathlib import Path

import pytest
from cli_run import run_mtrs


def test_audit_without_flask_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "flask", None)  # as if the extra ``craft`` were missing
    monkeypatch.delitem(sys.modules, "mtrs_geo.craft.audit_app", raising=False)
    result = run_mtrs("craft", "audit", tmp_path)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "needs Flask" in result.err and "pip install 'mtrs-geo[craft]'" in result.err
