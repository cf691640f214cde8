"""tools/evaluate.py loaded as a module (tools/ is no package), for the tests that drive its main."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
evaluate_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_tool)
